// Command parley runs a Parley node and administers Parley clusters.
package main

import (
	"fmt"
	"os"
)

// Set by the build (-ldflags "-X main.version=... -X main.commit=...").
var (
	version = "dev"
	commit  = "unknown"
)

const usage = `usage: parley <command> [flags]

commands:
  serve [--config FILE] [--KEY VALUE ...]   run a node
  keygen [--out FILE]                        write a new org signing key
  cluster status [--addr HTTP_ADDR]          members, roles, leader, indexes
  cluster join --addr HTTP_ADDR --node-id ID --raft-addr HOST:PORT
  cluster remove --addr HTTP_ADDR --node-id ID
  cluster snapshot [--addr HTTP_ADDR]        force a Raft snapshot on that node (before a backup)
  user add --username NAME [--password P] [--addr HTTP_ADDR]
                                             make an account (also when registration is closed)
  version                                    print version and commit
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
		fmt.Printf("parley %s (commit %s)\n", version, commit)
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	fmt.Fprintf(os.Stderr, "parley: unknown command %q\n%s", args[0], usage)
	return 2
}
