// Command parley runs a Parley node and administers Parley clusters.
package main

import (
	"fmt"
	"os"
	"runtime/debug"
)

// Set by the build (-ldflags "-X main.version=... -X main.commit=..."); when they are not,
// versionLine falls back to what Go records in the binary.
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `usage: parley <command> [flags]

commands:
  serve [--config FILE] [--KEY=VALUE ...]   run a node (serve --help lists the keys)
  keygen [--out FILE]                        write a new org signing key
  cluster status [--addr HTTP_ADDR] [--secret S]
                                             members, roles, leader, indexes
  cluster join --addr HTTP_ADDR --node-id ID --raft-addr HOST:PORT [--secret S]
  cluster remove --addr HTTP_ADDR --node-id ID [--secret S]
  cluster snapshot [--addr HTTP_ADDR] [--secret S]
                                             force a Raft snapshot on that node (before a backup)
  user add --username NAME [--password P] [--addr HTTP_ADDR] [--secret S]
                                             make an account (also when registration is closed)
  version                                    print version and commit

--addr defaults to 127.0.0.1:8080, --secret to $PARLEY_CLUSTER_SECRET; COMMAND --help lists
a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:])
	case "keygen":
		return keygen(args[1:])
	case "cluster":
		return clusterCommand(args[1:])
	case "user":
		return userCommand(args[1:])
	case "version", "--version":
		if len(args) > 1 && (args[1] == "-h" || args[1] == "--help") {
			fmt.Print("usage: parley version\n\nPrints the version and the commit it was built from.\n")
			return 0
		}
		if len(args) > 1 {
			fmt.Fprintf(os.Stderr, "parley version: unexpected argument %q\n", args[1])
			return 2
		}
		fmt.Println(versionLine())
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "parley: unknown command %q\n%s", args[0], usage)
	return 2
}

// versionLine is what `parley version` prints. A plain go build or go install sets no ldflags,
// but Go records the module version and the VCS revision in the binary: use those instead.
func versionLine() string {
	v, c := version, commit
	if info, ok := debug.ReadBuildInfo(); ok {
		v, c = fromBuildInfo(v, c, info)
	}
	return fmt.Sprintf("parley %s (commit %s)", v, c)
}

// fromBuildInfo fills in the version and commit that the ldflags left at their defaults.
func fromBuildInfo(v, c string, info *debug.BuildInfo) (string, string) {
	if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	if c != "unknown" {
		return v, c
	}
	rev, modified := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if rev != "" {
		c = rev
		if modified {
			c += "-dirty" // built from a working tree with uncommitted changes
		}
	}
	return v, c
}
