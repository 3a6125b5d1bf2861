package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/parley-chat/parley/federation"
)

const keygenUsage = "usage: parley keygen [--out FILE]\n\nWrites a new org signing key to FILE and prints its public key (ed25519:KEYID:BASE64).\n"

func keygen(args []string) int {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	out := fs.String("out", "./signing.key", "`FILE` to write the private key to (never overwritten)")
	if code, done := parseFlags(fs, "keygen", keygenUsage, args); done {
		return code
	}
	if fs.NArg() > 0 { // e.g. `keygen acme.key`, which would otherwise write ./signing.key
		fmt.Fprintf(os.Stderr, "parley keygen: unexpected argument %q (usage: parley keygen [--out FILE])\n", fs.Arg(0))
		return 2
	}
	if *out == "" { // would fail as "open : no such file or directory", exit 1
		fmt.Fprintln(os.Stderr, "parley keygen: --out needs a file name")
		return 2
	}
	key, err := federation.GenerateKey()
	if err != nil {
		fmt.Fprintf(os.Stderr, "parley keygen: %v\n", err)
		return 1
	}
	if err := federation.WriteNewKeyFile(*out, key); err != nil {
		fmt.Fprintf(os.Stderr, "parley keygen: %v\n", err)
		return 1
	}
	fmt.Println(key.PublicKeyString())
	return 0
}
