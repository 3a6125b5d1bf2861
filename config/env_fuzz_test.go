package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// scalarKeys are the keys PARLEY_* variables and flags set, in the table's order.
func scalarKeys() []string {
	var keys []string
	for _, s := range specs {
		if s.kind != kindList {
			keys = append(keys, s.key)
		}
	}
	return keys
}

// problems are err's problems as "key: problem", with the name of the value's source (the
// variable or the flag) replaced by SOURCE, sorted.
func problems(t *testing.T, err error, key string) []string {
	t.Helper()
	errs := configErrors(err)
	if len(errs) == 0 {
		t.Fatalf("error is not a *config.Error: %T %v", err, err)
	}
	var out []string
	for _, e := range errs {
		p := strings.ReplaceAll(e.Problem, "(from "+EnvVar(key)+")", "(from SOURCE)")
		p = strings.ReplaceAll(p, "(from --"+key+")", "(from SOURCE)")
		out = append(out, e.Key+": "+p)
	}
	slices.Sort(out)
	return out
}

// canonical writes a typed value as text that converts back to it.
func canonical(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case int:
		return strconv.Itoa(x)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	panic(fmt.Sprintf("no canonical form for %T", v))
}

// FuzzEnvValue sets one key from its PARLEY_* variable (with another PARLEY_* variable that
// names no key). Load never panics, and gives a config or *config.Errors, never both; the
// variable that names no key changes nothing; the same value given as --key=value loads the
// same config or fails with the same problems (naming the flag instead); and a value accepted
// is stable: written back as the text of what it converted to, it loads the same config.
func FuzzEnvValue(f *testing.F) {
	keys := scalarKeys()
	for i, key := range keys {
		// Every key's default, as the flags print it, and the values tests use.
		if s := specByKey[key]; s.def != nil {
			f.Add(uint8(i), fmt.Sprint(s.def), "X")
		}
	}
	index := func(key string) uint8 { return uint8(slices.Index(keys, key)) }
	for _, s := range []struct{ key, value string }{
		{"org", "Example.COM"}, {"org", ""}, {"http.listen", ":9"}, {"http.listen", "[::1]:80"},
		{"http.public_url", "https://chat.example.com/"}, {"http.public_url", "ftp://x"},
		{"ws.max_frame_bytes", " 2048 "}, {"ws.max_frame_bytes", "1e3"}, {"ws.max_frame_bytes", "99999999999999999999"},
		{"registration.open", "TRUE"}, {"registration.open", "yes"}, {"cluster.bootstrap", ""}, {"cluster.bootstrap", "0"},
		{"cluster.node_id", "node-1.a"}, {"cluster.node_id", "n o"}, {"cluster.join", "http://10.0.0.1:8080"},
		{"cluster.secret", "s3cret"}, {"limits.send_per_second", "1e400"}, {"limits.send_per_second", "NaN"},
		{"limits.send_per_second", "0x1p-2"}, {"limits.send_per_second", "-0"}, {"log.level", " WARN "},
		{"amqp.url", "amqps://u:p@h/v"}, {"tls.cert_file", "c.pem"}, {"admin.listen", "127.0.0.1:0"},
	} {
		f.Add(index(s.key), s.value, "CLUSTER")
	}
	f.Add(index("org"), "a.test", "CLUSTER_PEERS")
	f.Add(index("org"), "a.test", "CONFIG")
	f.Fuzz(func(t *testing.T, i uint8, value, other string) {
		key := keys[int(i)%len(keys)]
		env := []string{EnvVar(key) + "=" + value}
		l := &loader{env: parseEnviron(env), src: map[string]source{}}
		c, err := l.load(nil)
		if (c == nil) == (err == nil) {
			t.Fatalf("Load returned config %v and error %v", c, err)
		}
		// A PARLEY_* variable that names no key is ignored.
		if name, _, _ := strings.Cut("PARLEY_"+other, "="); name != "PARLEY_CONFIG" && !slices.ContainsFunc(specs, func(s keySpec) bool { return EnvVar(s.key) == name }) {
			c2, err2 := Load(nil, append(env, "PARLEY_"+other+"=1"))
			if !reflect.DeepEqual(c, c2) || (err == nil) != (err2 == nil) || err != nil && !slices.Equal(problems(t, err, key), problems(t, err2, key)) {
				t.Fatalf("PARLEY_%s changed the outcome: %v %v, then %v %v", other, c, err, c2, err2)
			}
		}
		cf, errf := Load([]string{"--" + key + "=" + value}, nil)
		if err != nil {
			if errf == nil {
				t.Fatalf("%s=%q: %v, but --%s=%q is accepted", EnvVar(key), value, err, key, value)
			}
			if pe, pf := problems(t, err, key), problems(t, errf, key); !slices.Equal(pe, pf) {
				t.Fatalf("%q: the variable's problems\n%q\nthe flag's\n%q", value, pe, pf)
			}
			return
		}
		if errf != nil || !reflect.DeepEqual(c, cf) {
			t.Fatalf("%q: from %s %+v, from --%s %+v (%v)", value, EnvVar(key), c, key, cf, errf)
		}
		typed, ok := l.vals[key]
		if !ok {
			t.Fatalf("%s=%q accepted without a value", EnvVar(key), value)
		}
		again, err := Load(nil, []string{EnvVar(key) + "=" + canonical(typed)})
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("%q was read as %#v, which loads as %+v (%v), not %+v", value, typed, again, err, c)
		}
	})
}
