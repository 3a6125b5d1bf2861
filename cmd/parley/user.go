package main

import (
	"flag"
	"fmt"
	"io"
	"os"
)

const userUsage = "usage: parley user add --username NAME [--password P] [--addr HTTP_ADDR] [--secret S]\n"

// userCommand is `parley user add`: it asks a running node to make an account, which works
// also when registration.open is false.
func userCommand(args []string) int {
	switch {
	case len(args) == 0:
		fmt.Fprint(os.Stderr, "parley user: missing command\n"+userUsage)
		return 2
	case args[0] == "-h" || args[0] == "--help":
		fmt.Print(userUsage)
		return 0
	case args[0] != "add":
		fmt.Fprintf(os.Stderr, "parley user: unknown command %q\n%s", args[0], userUsage)
		return 2
	}
	fs := flag.NewFlagSet("user add", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("addr", "127.0.0.1:8080", "`HTTP_ADDR` (HOST:PORT or URL) of any node of the org")
	username := fs.String("username", "", "localpart (`NAME`) of the new user")
	var password, secret string
	fs.StringVar(&password, "password", "", "password `P` (default $PARLEY_USER_PASSWORD)")
	fs.StringVar(&secret, "secret", "", "cluster secret `S` (default $PARLEY_CLUSTER_SECRET)")
	if code, done := parseFlags(fs, "user add", userUsage+"\nMakes an account, also when registration.open is false.\n", args[1:]); done {
		return code
	}
	stringFromEnv(fs, "password", "PARLEY_USER_PASSWORD", &password)
	stringFromEnv(fs, "secret", "PARLEY_CLUSTER_SECRET", &secret)
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "parley user add: unexpected argument %q (flags take the form --name value)\n", fs.Arg(0))
		return 2
	}
	if *username == "" || password == "" {
		fmt.Fprintln(os.Stderr, "parley user add: --username and --password (or $PARLEY_USER_PASSWORD) are required")
		return 2
	}
	base, err := baseURL(*addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "parley user add: %v\n", err)
		return 2
	}
	c := adminClient{base: base, secret: secret}
	return c.post("user add", "/v1/admin/users", map[string]string{"username": *username, "password": password})
}
