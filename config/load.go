package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// ErrHelp is returned by Load when the arguments ask for help (-h, --help).
// Print Usage() and exit 0.
var ErrHelp = pflag.ErrHelp

// Usage returns the flag usage text.
func Usage() string {
	return newFlagSet().FlagUsages()
}

func newFlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("parley", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.String("config", "", "YAML configuration file (also PARLEY_CONFIG)")
	for _, s := range specs {
		if s.kind == kindList {
			continue
		}
		// All flags are strings so that bad values are reported by the
		// same conversion (and with the same messages) as env and file.
		def := ""
		if s.def != nil {
			def = fmt.Sprint(s.def)
		}
		f := fs.VarPF(&stringValue{v: def, typ: typeNames[s.kind]}, s.key, "", s.usage+" (env "+EnvVar(s.key)+")")
		if s.kind == kindBool {
			f.NoOptDefVal = "true"
		}
	}
	return fs
}

var typeNames = map[kind]string{kindString: "string", kindBool: "bool", kindInt: "int", kindFloat: "float"}

// stringValue is a pflag.Value that stores the raw string; its type name
// only affects usage output.
type stringValue struct{ v, typ string }

func (s *stringValue) String() string     { return s.v }
func (s *stringValue) Set(v string) error { s.v = v; return nil }
func (s *stringValue) Type() string       { return s.typ }

// Load builds the configuration: defaults < file (flag --config, or
// PARLEY_CONFIG) < env < flags.
//
// args are the command-line arguments after the subcommand (e.g.
// ["--config", "x.yaml", "--http.listen", ":9"]). environ is like
// os.Environ() and is the only environment consulted. A variable that is
// set overrides the file even when empty (os.LookupEnv semantics), so an
// operator can clear a file's amqp.url or cluster.join; for keys that must
// not be empty, that is reported like any bad value. Unrelated PARLEY_*
// variables are ignored. Every bad
// value is reported as an *Error (several are joined with errors.Join);
// -h/--help yields ErrHelp.
func Load(args []string, environ []string) (*Config, error) {
	l := &loader{env: parseEnviron(environ), src: map[string]source{}}
	return l.load(args)
}

type loader struct {
	env  map[string]string
	fs   *pflag.FlagSet
	file string       // config file path, "" if none
	fv   *viper.Viper // the file's contents
	src  map[string]source
	vals map[string]any // resolved, typed scalar values

	derivedPublicURL bool // http.public_url was derived from http.listen
	derivedAdvertise bool // cluster.raft_advertise was derived from cluster.raft_listen
}

func parseEnviron(environ []string) map[string]string {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			env[k] = v // the last one wins, as with exec.Cmd
		}
	}
	return env
}

func (l *loader) load(args []string) (*Config, error) {
	if err := l.parseFlags(args); err != nil {
		return nil, err
	}
	if err := l.readFile(); err != nil {
		return nil, err
	}
	if err := l.checkFileKeys(); err != nil {
		return nil, err
	}
	for _, s := range specs {
		if s.kind == kindList {
			if _, ok := l.env[EnvVar(s.key)]; ok {
				return nil, &Error{Key: s.key, Problem: "is a list and can only be set in the config file, not by " + EnvVar(s.key)}
			}
		}
	}

	v := viper.New()
	var errs []error
	l.vals = map[string]any{}
	for i := range specs {
		s := &specs[i]
		if s.kind == kindList {
			items, err := l.listValue(s.key)
			if err != nil {
				errs = append(errs, err)
			} else if items != nil {
				v.Set(s.key, items)
			}
			continue
		}
		raw, src, ok := l.raw(s)
		if !ok {
			continue
		}
		l.src[s.key] = src
		typed, problem := convert(raw, s.kind)
		if problem != "" {
			errs = append(errs, l.fail(s.key, problem, raw))
			continue
		}
		l.vals[s.key] = typed
		v.Set(s.key, typed)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}

	var c Config
	if err := v.Unmarshal(&c); err != nil {
		// Unreachable in practice: values were type-checked above.
		return nil, &Error{Key: "config", Problem: err.Error()}
	}
	l.finish(&c)
	if errs := l.validate(&c); len(errs) > 0 {
		return nil, joinErrors(errs)
	}
	return &c, nil
}

func joinErrors(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

func (l *loader) parseFlags(args []string) error {
	l.fs = newFlagSet()
	if err := l.fs.Parse(args); err != nil {
		var notExist *pflag.NotExistError
		var needsValue *pflag.ValueRequiredError
		var syntax *pflag.InvalidSyntaxError
		switch {
		case errors.Is(err, pflag.ErrHelp):
			return ErrHelp
		case errors.As(err, &notExist):
			name := notExist.GetSpecifiedName()
			p := "unknown flag"
			if s := suggest(name); s != "" && specByKey[s].kind != kindList {
				p += fmt.Sprintf(" (did you mean --%s?)", s)
			} else if s != "" {
				p += fmt.Sprintf(" (%s can only be set in the config file)", s)
			}
			return &Error{Key: name, Problem: p}
		case errors.As(err, &needsValue):
			if needsValue.GetSpecifiedName() == "config" { // as --config= says: the key alone is not named
				return &Error{Key: "config", Problem: "--config needs a file name"}
			}
			return &Error{Key: needsValue.GetSpecifiedName(), Problem: "flag needs a value"}
		case errors.As(err, &syntax):
			return &Error{Key: syntax.GetSpecifiedFlag(), Problem: "bad flag syntax"}
		default:
			return &Error{Key: "args", Problem: err.Error()}
		}
	}
	if l.fs.NArg() > 0 {
		if key := boolFlagBefore(args, l.fs.Arg(0)); key != "" {
			// "--registration.open false": pflag took the flag as true and "false" as an argument.
			return &Error{Key: key, Problem: fmt.Sprintf("a boolean flag takes its value as --%s=%s, not as a separate argument", key, l.fs.Arg(0))}
		}
		return &Error{Key: "args", Problem: fmt.Sprintf("unexpected argument %q (flags take the form --key=value)", l.fs.Arg(0))}
	}
	return nil
}

// boolFlagBefore is the key of the bare boolean flag just before the first appearance of arg in
// args, "" when arg does not follow one.
func boolFlagBefore(args []string, arg string) string {
	for i := 1; i < len(args); i++ {
		if args[i] != arg {
			continue
		}
		key := strings.TrimLeft(args[i-1], "-")
		if spec, ok := specByKey[key]; ok && strings.HasPrefix(args[i-1], "-") && spec.kind == kindBool {
			return key
		}
		return ""
	}
	return ""
}

func (l *loader) readFile() error {
	l.fv = viper.New()
	if f := l.fs.Lookup("config"); f.Changed {
		l.file = f.Value.String()
		if l.file == "" {
			return &Error{Key: "config", Problem: "--config needs a file name"}
		}
	} else {
		l.file = l.env["PARLEY_CONFIG"]
	}
	if l.file == "" {
		return nil
	}
	data, err := os.ReadFile(l.file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // "open FILE:" would name the file twice
		}
		return &Error{Key: "config", Problem: fmt.Sprintf("cannot read config file %s: %v", l.file, err)}
	}
	l.fv.SetConfigType("yaml")
	if err := l.fv.ReadConfig(bytes.NewReader(data)); err != nil {
		msg := err.Error()
		var pe viper.ConfigParseError
		if errors.As(err, &pe) {
			if u := errors.Unwrap(pe); u != nil {
				msg = u.Error()
			}
		}
		return &Error{Key: "config", Problem: fmt.Sprintf("%s: invalid YAML (want a mapping of keys): %s", l.file, msg)}
	}
	return nil
}

// checkFileKeys rejects unknown keys and values of the wrong shape.
func (l *loader) checkFileKeys() error {
	keys := l.fv.AllKeys()
	sort.Strings(keys)
	for _, k := range keys {
		val := l.fv.Get(k)
		if s, ok := specByKey[k]; ok {
			if val != nil && s.kind != kindList && isList(val) {
				return l.fileErr(k, "must be a single value, not a list")
			}
			continue // lists are checked by listValue
		}
		if sections[k] {
			if val != nil {
				return l.fileErr(k, fmt.Sprintf("must be a mapping of keys, got %s", describeValue(val)))
			}
			continue
		}
		parts := strings.Split(k, ".")
		for i := 1; i < len(parts); i++ {
			p := strings.Join(parts[:i], ".")
			if s, ok := specByKey[p]; ok {
				if s.kind == kindList {
					return l.fileErr(p, "must be a list, not a mapping")
				}
				return l.fileErr(p, "must be a single value, not a mapping")
			}
		}
		problem := "unknown key"
		if s := suggest(k); s != "" {
			problem += fmt.Sprintf(" (did you mean %s?)", s)
		}
		return l.fileErr(k, problem)
	}
	return nil
}

func (l *loader) fileErr(key, problem string) *Error {
	return &Error{Key: key, Problem: problem + " (in config file " + l.file + ")"}
}

// raw returns the highest-precedence value of a scalar key.
func (l *loader) raw(s *keySpec) (any, source, bool) {
	if f := l.fs.Lookup(s.key); f != nil && f.Changed {
		return f.Value.String(), source{fromFlag, s.key}, true
	}
	name := EnvVar(s.key)
	if v, ok := l.env[name]; ok { // set, even to "": see Load
		return v, source{fromEnv, name}, true
	}
	if v := l.fv.Get(s.key); v != nil {
		return v, source{fromFile, l.file}, true
	}
	if s.def != nil {
		return s.def, source{}, true
	}
	return nil, source{}, false
}

// fail builds the error for a scalar key, naming the value (unless secret)
// and where it came from.
func (l *loader) fail(key, problem string, val any) *Error {
	if s := specByKey[key]; s != nil && !s.secret && val != nil {
		if str := describeValue(val); len(str) <= 200 {
			problem += ", got " + str
		}
	}
	if src, ok := l.src[key]; ok {
		problem += " (from " + src.String() + ")"
	}
	return &Error{Key: key, Problem: problem}
}

func isList(v any) bool {
	if v == nil {
		return false
	}
	k := reflect.TypeOf(v).Kind()
	return k == reflect.Slice || k == reflect.Array
}

func isMap(v any) bool {
	return v != nil && reflect.TypeOf(v).Kind() == reflect.Map
}

// scalarString converts a scalar YAML value to a string.
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case time.Time:
		return x.Format(time.RFC3339Nano), true
	case nil:
		return "", true
	}
	if isList(v) || isMap(v) {
		return "", false
	}
	switch reflect.TypeOf(v).Kind() {
	case reflect.Struct, reflect.Pointer, reflect.Func, reflect.Chan, reflect.Interface, reflect.UnsafePointer:
		return "", false
	}
	return fmt.Sprint(v), true
}

// convert turns a raw value (string from env/flags, anything from YAML)
// into the key's type. It returns a problem description on failure.
func convert(raw any, k kind) (any, string) {
	if isList(raw) {
		return nil, "must be a single value, not a list"
	}
	if isMap(raw) {
		return nil, "must be a single value, not a mapping"
	}
	switch k {
	case kindString:
		s, ok := scalarString(raw)
		if !ok {
			return nil, "must be a string"
		}
		return s, ""
	case kindBool:
		if b, ok := raw.(bool); ok {
			return b, ""
		}
		if s, ok := scalarString(raw); ok {
			if b, err := strconv.ParseBool(strings.TrimSpace(s)); err == nil {
				return b, ""
			}
		}
		return nil, "must be true or false"
	case kindInt:
		switch x := raw.(type) {
		case int:
			return x, ""
		case int64:
			if x >= math.MinInt && x <= math.MaxInt {
				return int(x), ""
			}
		case uint64:
			if x <= math.MaxInt {
				return int(x), ""
			}
		case float64:
			if x == math.Trunc(x) && x >= -(1<<53) && x <= 1<<53 {
				return int(x), ""
			}
		case string:
			if n, err := strconv.Atoi(strings.TrimSpace(x)); err == nil {
				return n, ""
			}
		}
		return nil, "must be an integer"
	case kindFloat:
		var f float64
		switch x := raw.(type) {
		case int:
			f = float64(x)
		case int64:
			f = float64(x)
		case uint64:
			f = float64(x)
		case float64:
			f = x
		case string:
			var err error
			if f, err = strconv.ParseFloat(strings.TrimSpace(x), 64); err != nil {
				return nil, "must be a number"
			}
		default:
			return nil, "must be a number"
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, "must be a finite number"
		}
		return f, ""
	}
	return nil, "unsupported key type"
}

// listValue checks and normalizes a list key from the file: lists of
// strings, or lists of mappings with known fields whose values are strings
// (or, for list fields, lists of strings).
func (l *loader) listValue(key string) ([]any, error) {
	raw := l.fv.Get(key)
	if raw == nil {
		return nil, nil
	}
	if !isList(raw) {
		return nil, l.fileErr(key, "must be a list")
	}
	rv := reflect.ValueOf(raw)
	out := make([]any, 0, rv.Len())
	fields, ofMaps := listItemFields[key]
	for i := 0; i < rv.Len(); i++ {
		item := rv.Index(i).Interface()
		ik := fmt.Sprintf("%s[%d]", key, i)
		if !ofMaps {
			s, ok := scalarString(item)
			if !ok || item == nil {
				return nil, l.fileErr(ik, "must be a string")
			}
			out = append(out, s)
			continue
		}
		if !isMap(item) {
			return nil, l.fileErr(ik, fmt.Sprintf("must be a mapping with keys %s", fieldNames(fields)))
		}
		m := map[string]any{}
		iter := reflect.ValueOf(item).MapRange()
		for iter.Next() {
			name := strings.ToLower(fmt.Sprint(iter.Key().Interface()))
			fk := ik + "." + name
			isListField, known := fields[name]
			if !known {
				return nil, l.fileErr(fk, fmt.Sprintf("unknown key (allowed: %s)", fieldNames(fields)))
			}
			val := iter.Value().Interface()
			if val == nil {
				continue
			}
			if !isListField {
				s, ok := scalarString(val)
				if !ok {
					return nil, l.fileErr(fk, "must be a string")
				}
				m[name] = s
				continue
			}
			if !isList(val) {
				return nil, l.fileErr(fk, "must be a list of strings")
			}
			lv := reflect.ValueOf(val)
			strs := make([]string, 0, lv.Len())
			for j := 0; j < lv.Len(); j++ {
				e := lv.Index(j).Interface()
				s, ok := scalarString(e)
				if !ok || e == nil {
					return nil, l.fileErr(fmt.Sprintf("%s[%d]", fk, j), "must be a string")
				}
				strs = append(strs, s)
			}
			m[name] = strs
		}
		out = append(out, m)
	}
	return out, nil
}

func fieldNames(fields map[string]bool) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// finish applies derived defaults.
func (l *loader) finish(c *Config) {
	c.Log.Level = strings.ToLower(strings.TrimSpace(c.Log.Level))
	l.derivedPublicURL = c.HTTP.PublicURL == ""
	c.HTTP.PublicURL = c.PublicURL()
	if c.Cluster.RaftAdvertise == "" {
		l.derivedAdvertise = true
		c.Cluster.RaftAdvertise = c.Cluster.RaftListen
	}
	if _, ok := l.vals["cluster.bootstrap"]; ok {
		c.Cluster.BootstrapSet = true
	} else {
		c.Cluster.Bootstrap = c.Cluster.Join == ""
	}
}
