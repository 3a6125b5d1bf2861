package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
)

// parseFlags parses a subcommand's flags. --help (or -h) prints usage and the flags to stdout
// and ends the command with exit 0, as `serve --help` does; any other flag error is a usage
// error (exit 2). It returns done when the command is over, with its exit code.
func parseFlags(fs *flag.FlagSet, name, usage string, args []string) (code int, done bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Print(usage + "\nflags:\n" + flagUsages(fs))
		return 0, true
	case err != nil:
		fmt.Fprintf(os.Stderr, "parley %s: %v\n", name, err)
		return 2, true
	}
	return 0, false
}

// flagUsages lists fs's flags in the form the commands take them (--name), one a line.
func flagUsages(fs *flag.FlagSet) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 3, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		if f.DefValue != "" {
			usage += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(tw, "  --%s %s\t%s\n", f.Name, arg, usage)
	})
	tw.Flush()
	return b.String()
}

// stringFromEnv sets *p from the environment variable env when the flag name was not given.
// Such a default is applied after parsing, not given to fs.String, which --help would print:
// it is a secret or a password.
func stringFromEnv(fs *flag.FlagSet, name, env string, p *string) {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	if !given {
		*p = os.Getenv(env)
	}
}
