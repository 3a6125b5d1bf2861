package content

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	"golang.org/x/net/html"
)

const (
	codeInvalid  = "M_INVALID_PARAM"
	codeTooLarge = "M_TOO_LARGE"
)

// jsonString quotes s as a JSON string.
func jsonString(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestMessage(t *testing.T) {
	bodyMax := strings.Repeat("a", MaxBodyBytes)
	tests := []struct {
		name string
		typ  string
		raw  string
		want string // canonical output when accepted
		code string // error code when refused
	}{
		// Accepted, returned in canonical JSON.
		{name: "text", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"hi"}`,
			want: `{"body":"hi","msgtype":"m.text"}`},
		{name: "keys sorted, spaces dropped", typ: "m.room.message", raw: ` { "msgtype" : "m.notice" , "body" : "n" } `,
			want: `{"body":"n","msgtype":"m.notice"}`},
		{name: "emote", typ: "m.room.message", raw: `{"msgtype":"m.emote","body":"waves"}`,
			want: `{"body":"waves","msgtype":"m.emote"}`},
		{name: "shortest escapes", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"\u003cb\u003e \u00e9 \n"}`,
			want: `{"body":"<b> é \n","msgtype":"m.text"}`},
		{name: "unknown keys kept", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","org.example.n":1}`,
			want: `{"body":"x","msgtype":"m.text","org.example.n":1}`},
		{name: "body at the limit", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"` + bodyMax + `"}`,
			want: `{"body":"` + bodyMax + `","msgtype":"m.text"}`},
		{name: "formatted body kept and format set", typ: "m.room.message",
			raw:  `{"msgtype":"m.text","body":"b","formatted_body":"<b>b</b>"}`,
			want: `{"body":"b","format":"org.matrix.custom.html","formatted_body":"<b>b</b>","msgtype":"m.text"}`},
		{name: "formatted body sanitized", typ: "m.room.message",
			raw:  `{"msgtype":"m.text","body":"b","format":"org.matrix.custom.html","formatted_body":"<b onclick=\"x()\">b</b><script>alert(1)</script>"}`,
			want: `{"body":"b","format":"org.matrix.custom.html","formatted_body":"<b>b</b>","msgtype":"m.text"}`},
		{name: "format without formatted body dropped", typ: "m.room.message",
			raw:  `{"msgtype":"m.text","body":"b","format":"org.matrix.custom.html"}`,
			want: `{"body":"b","msgtype":"m.text"}`},
		{name: "reply", typ: "m.room.message",
			raw:  `{"msgtype":"m.text","body":"r","m.relates_to":{"m.in_reply_to":{"event_id":"$abc"}}}`,
			want: `{"body":"r","m.relates_to":{"m.in_reply_to":{"event_id":"$abc"}},"msgtype":"m.text"}`},
		{name: "edit", typ: "m.room.message",
			raw:  `{"msgtype":"m.text","body":"* new","m.new_content":{"msgtype":"m.text","body":"new"},"m.relates_to":{"rel_type":"m.replace","event_id":"$abc"}}`,
			want: `{"body":"* new","m.new_content":{"body":"new","msgtype":"m.text"},"m.relates_to":{"event_id":"$abc","rel_type":"m.replace"},"msgtype":"m.text"}`},
		{name: "edit sanitizes the new content", typ: "m.room.message",
			raw:  `{"msgtype":"m.text","body":"* n","m.new_content":{"msgtype":"m.text","body":"n","formatted_body":"<i>n</i><iframe src=\"https://e.example\"></iframe>"},"m.relates_to":{"rel_type":"m.replace","event_id":"$abc"}}`,
			want: `{"body":"* n","m.new_content":{"body":"n","format":"org.matrix.custom.html","formatted_body":"<i>n</i>","msgtype":"m.text"},"m.relates_to":{"event_id":"$abc","rel_type":"m.replace"},"msgtype":"m.text"}`},
		{name: "reaction", typ: "m.reaction",
			raw:  `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$abc","key":"👍"}}`,
			want: `{"m.relates_to":{"event_id":"$abc","key":"👍","rel_type":"m.annotation"}}`},

		// Refused.
		{name: "formatted body in an unknown format", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"b","format":"markdown","formatted_body":"**b**"}`, code: codeInvalid},
		{name: "empty", typ: "m.room.message", raw: ``, code: codeInvalid},
		{name: "not JSON", typ: "m.room.message", raw: `{msgtype}`, code: codeInvalid},
		{name: "trailing data", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x"} {}`, code: codeInvalid},
		{name: "null", typ: "m.room.message", raw: `null`, code: codeInvalid},
		{name: "array", typ: "m.room.message", raw: `[{"msgtype":"m.text","body":"x"}]`, code: codeInvalid},
		{name: "string", typ: "m.room.message", raw: `"x"`, code: codeInvalid},
		{name: "float", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","n":1.5}`, code: codeInvalid},
		{name: "exponent", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","n":1e3}`, code: codeInvalid},
		{name: "integer out of range", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","n":9007199254740992}`, code: codeInvalid},
		{name: "duplicate key", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","body":"y"}`, code: codeInvalid},
		{name: "invalid UTF-8", typ: "m.room.message", raw: "{\"msgtype\":\"m.text\",\"body\":\"\xff\"}", code: codeInvalid},
		{name: "lone surrogate", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"\ud800"}`, code: codeInvalid},
		{name: "no msgtype", typ: "m.room.message", raw: `{"body":"x"}`, code: codeInvalid},
		{name: "unknown msgtype", typ: "m.room.message", raw: `{"msgtype":"m.file","body":"x"}`, code: codeInvalid},
		{name: "msgtype not a string", typ: "m.room.message", raw: `{"msgtype":1,"body":"x"}`, code: codeInvalid},
		{name: "no body", typ: "m.room.message", raw: `{"msgtype":"m.text"}`, code: codeInvalid},
		{name: "body not a string", typ: "m.room.message", raw: `{"msgtype":"m.text","body":["x"]}`, code: codeInvalid},
		{name: "NUL in body", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"a\u0000b"}`, code: codeInvalid},
		{name: "body over 32 KiB", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"` + bodyMax + `b"}`, code: codeTooLarge},
		{name: "content over 48 KiB", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","pad":"` + strings.Repeat("p", MaxContentBytes) + `"}`, code: codeTooLarge},
		{name: "formatted body not a string", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","formatted_body":1}`, code: codeInvalid},
		{name: "NUL in formatted body", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","formatted_body":"\u0000"}`, code: codeInvalid},
		{name: "formatted body over 32 KiB", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","formatted_body":"` + bodyMax + `b"}`, code: codeTooLarge},
		{name: "relates_to not an object", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","m.relates_to":"$a"}`, code: codeInvalid},
		{name: "relates_to empty", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x","m.relates_to":{}}`, code: codeInvalid},
		{name: "annotation on a message", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.relates_to":{"rel_type":"m.annotation","event_id":"$a","key":"k"}}`, code: codeInvalid},
		{name: "unknown rel_type", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.relates_to":{"rel_type":"m.thread","event_id":"$a"}}`, code: codeInvalid},
		{name: "edit without new content", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.relates_to":{"rel_type":"m.replace","event_id":"$a"}}`, code: codeInvalid},
		{name: "edit without event id", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.new_content":{"msgtype":"m.text","body":"y"},"m.relates_to":{"rel_type":"m.replace"}}`, code: codeInvalid},
		{name: "edit of a non-event id", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.new_content":{"msgtype":"m.text","body":"y"},"m.relates_to":{"rel_type":"m.replace","event_id":"abc"}}`, code: codeInvalid},
		{name: "new content not an object", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.new_content":"y","m.relates_to":{"rel_type":"m.replace","event_id":"$a"}}`, code: codeInvalid},
		{name: "new content with a bad msgtype", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.new_content":{"msgtype":"m.bad","body":"y"},"m.relates_to":{"rel_type":"m.replace","event_id":"$a"}}`, code: codeInvalid},
		{name: "nested relation", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.new_content":{"msgtype":"m.text","body":"y","m.relates_to":{"m.in_reply_to":{"event_id":"$b"}}},"m.relates_to":{"rel_type":"m.replace","event_id":"$a"}}`, code: codeInvalid},
		{name: "nested new content", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.new_content":{"msgtype":"m.text","body":"y","m.new_content":{"msgtype":"m.text","body":"z"}},"m.relates_to":{"rel_type":"m.replace","event_id":"$a"}}`, code: codeInvalid},
		{name: "reply target not an object", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.relates_to":{"m.in_reply_to":"$a"}}`, code: codeInvalid},
		{name: "reply without event id", typ: "m.room.message",
			raw: `{"msgtype":"m.text","body":"x","m.relates_to":{"m.in_reply_to":{}}}`, code: codeInvalid},
		{name: "reaction without relation", typ: "m.reaction", raw: `{"key":"k"}`, code: codeInvalid},
		{name: "reaction with rel_type replace", typ: "m.reaction",
			raw: `{"m.relates_to":{"rel_type":"m.replace","event_id":"$a","key":"k"}}`, code: codeInvalid},
		{name: "reaction without key", typ: "m.reaction", raw: `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$a"}}`, code: codeInvalid},
		{name: "reaction key not a string", typ: "m.reaction", raw: `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$a","key":1}}`, code: codeInvalid},
		{name: "reaction key too long", typ: "m.reaction",
			raw: `{"m.relates_to":{"rel_type":"m.annotation","event_id":"$a","key":"` + strings.Repeat("k", MaxKeyBytes+1) + `"}}`, code: codeTooLarge},
		{name: "reaction without event id", typ: "m.reaction", raw: `{"m.relates_to":{"rel_type":"m.annotation","key":"k"}}`, code: codeInvalid},
		{name: "state type", typ: "m.room.name", raw: `{"name":"x"}`, code: codeInvalid},
		{name: "unknown type", typ: "m.sticker", raw: `{"body":"x"}`, code: codeInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Message(tc.typ, json.RawMessage(tc.raw))
			checkResult(t, out, err, tc.want, tc.code)
		})
	}
}

func checkResult(t *testing.T, out json.RawMessage, err *Error, want, code string) {
	t.Helper()
	if code != "" {
		if err == nil {
			t.Fatalf("accepted as %s, want %s", out, code)
		}
		if err.Code != code || err.Message == "" {
			t.Fatalf("refused with %q %q, want %s", err.Code, err.Message, code)
		}
		if out != nil {
			t.Fatalf("refusal came with output %s", out)
		}
		return
	}
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	if string(out) != want {
		t.Fatalf("got  %s\nwant %s", out, want)
	}
}

func TestState(t *testing.T) {
	defaultPL, err := json.Marshal(state.DefaultPowerLevels("@alice:test.local"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		typ  string
		raw  string
		want string
		code string
	}{
		{name: "name", typ: "m.room.name", raw: `{"name":"General"}`, want: `{"name":"General"}`},
		{name: "empty name", typ: "m.room.name", raw: `{"name":""}`, want: `{"name":""}`},
		{name: "name keeps only name", typ: "m.room.name", raw: `{"name":"G","x":1}`, want: `{"name":"G"}`},
		{name: "name at the limit", typ: "m.room.name", raw: `{"name":"` + strings.Repeat("n", MaxNameBytes) + `"}`,
			want: `{"name":"` + strings.Repeat("n", MaxNameBytes) + `"}`},
		{name: "name over the limit", typ: "m.room.name", raw: `{"name":"` + strings.Repeat("n", MaxNameBytes+1) + `"}`, code: codeTooLarge},
		{name: "name missing", typ: "m.room.name", raw: `{}`, code: codeInvalid},
		{name: "name not a string", typ: "m.room.name", raw: `{"name":1}`, code: codeInvalid},
		{name: "NUL in name", typ: "m.room.name", raw: `{"name":"a\u0000"}`, code: codeInvalid},
		{name: "topic", typ: "m.room.topic", raw: `{"topic":"<b>t</b>"}`, want: `{"topic":"<b>t</b>"}`},
		{name: "topic over the limit", typ: "m.room.topic", raw: `{"topic":"` + strings.Repeat("t", MaxTopicBytes+1) + `"}`, code: codeTooLarge},
		{name: "topic missing", typ: "m.room.topic", raw: `{"name":"x"}`, code: codeInvalid},
		{name: "power levels", typ: "m.room.power_levels", raw: string(defaultPL),
			want: `{"ban":50,"events_default":0,"invite":0,"kick":50,"redact":50,"state_default":50,"users":{"@alice:test.local":100},"users_default":0}`},
		{name: "power levels defaults filled", typ: "m.room.power_levels", raw: `{"users":{"@bob:test.local":50}}`,
			want: `{"ban":0,"events_default":0,"invite":0,"kick":0,"redact":0,"state_default":0,"users":{"@bob:test.local":50},"users_default":0}`},
		{name: "power levels with events", typ: "m.room.power_levels", raw: `{"events":{"m.room.name":10},"kick":50}`,
			want: `{"ban":0,"events":{"m.room.name":10},"events_default":0,"invite":0,"kick":50,"redact":0,"state_default":0,"users_default":0}`},
		{name: "power levels unknown field", typ: "m.room.power_levels", raw: `{"kick":50,"notifications":{}}`, code: codeInvalid},
		{name: "power levels string level", typ: "m.room.power_levels", raw: `{"kick":"50"}`, code: codeInvalid},
		{name: "power levels float level", typ: "m.room.power_levels", raw: `{"kick":50.5}`, code: codeInvalid},
		{name: "power levels users key not a user", typ: "m.room.power_levels", raw: `{"users":{"bob":50}}`, code: codeInvalid},
		{name: "power levels users not an object", typ: "m.room.power_levels", raw: `{"users":[]}`, code: codeInvalid},
		{name: "content over 48 KiB", typ: "m.room.topic", raw: `{"topic":"t","pad":"` + strings.Repeat("p", MaxContentBytes) + `"}`, code: codeTooLarge},
		{name: "not an object", typ: "m.room.name", raw: `["name"]`, code: codeInvalid},
		{name: "empty", typ: "m.room.name", raw: ``, code: codeInvalid},
		{name: "create", typ: "m.room.create", raw: `{"creator":"@a:test.local"}`, code: codeInvalid},
		{name: "member", typ: "m.room.member", raw: `{"membership":"join"}`, code: codeInvalid},
		{name: "message", typ: "m.room.message", raw: `{"msgtype":"m.text","body":"x"}`, code: codeInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := State(tc.typ, json.RawMessage(tc.raw))
			checkResult(t, out, err, tc.want, tc.code)
		})
	}
}

func TestCheckText(t *testing.T) {
	tests := []struct {
		s    string
		max  int
		code string
	}{
		{"plain", 5, ""},
		{"", 0, ""},
		{"é", 2, ""},
		{"é", 1, codeTooLarge}, // bytes, not characters
		{"toolong", 3, codeTooLarge},
		{"a\x00b", 10, codeInvalid},
		{"\xff", 10, codeInvalid},
	}
	for _, tc := range tests {
		err := CheckText("f", tc.s, tc.max)
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("CheckText(%q, %d) = %v, want nil", tc.s, tc.max, err)
		case tc.code != "" && (err == nil || err.Code != tc.code):
			t.Errorf("CheckText(%q, %d) = %v, want %s", tc.s, tc.max, err, tc.code)
		}
	}
}

// xssInputs are classic injection vectors. None of them holds "onerror", "javascript:" or
// "<script" as plain text, so after sanitizing none of those may remain at all.
var xssInputs = []string{
	`<img src=x onerror=alert(1)><script>alert(2)</script>`,
	`<IMG SRC=x OnErRoR=alert(1)>`,
	`<script src="https://evil.example/x.js"></script>`,
	`<ScRiPt>alert(1)</sCrIpT>`,
	`<a href="javascript:alert(1)">x</a>`,
	`<a href="JaVaScRiPt:alert(1)">x</a>`,
	`<a href=" javascript:alert(1)">x</a>`,
	`<a href="&#106;avascript:alert(1)">x</a>`,
	`<a href="&#x6A;avascript&#58;alert(1)">x</a>`,
	`<a href="java&#x09;script:alert(1)">x</a>`,
	`<p style="background:url(javascript:alert(1))">s</p>`,
	`<iframe src="https://evil.example"></iframe>`,
	`<iframe srcdoc="<script>alert(1)</script>"></iframe>`,
	`<svg onload=alert(1)><script>alert(1)</script></svg>`,
	`<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>`,
	`<<script>script>alert(1)<</script>/script>`,
	`<body onload=alert(1)>`,
	`<div onmouseover="alert(1)">hover</div>`,
	`<form action="javascript:alert(1)"><button>b</button></form>`,
	`<object data="javascript:alert(1)"></object><embed src="javascript:alert(1)">`,
	`<style>body{background:red}</style><link rel=stylesheet href=https://evil.example/x.css>`,
	`<meta http-equiv="refresh" content="0;url=javascript:alert(1)">`,
	`<img src="javascript:alert(1)">`,
	`<!--<img src="--><img src=x onerror=alert(1)//">`,
	"<scr\x00ipt>alert(1)</script>",
}

func TestSanitizeHTML(t *testing.T) {
	for _, in := range xssInputs {
		out := SanitizeHTML(in)
		if reason := unsafeHTML(out); reason != "" {
			t.Errorf("SanitizeHTML(%q) = %q: %s", in, out, reason)
		}
		low := strings.ToLower(out)
		for _, bad := range []string{"<script", "onerror", "javascript:", "<iframe", "style=", "<style", "onload", "onmouseover"} {
			if strings.Contains(low, bad) {
				t.Errorf("SanitizeHTML(%q) = %q: contains %q", in, out, bad)
			}
		}
	}
	// The safe subset survives.
	keep := map[string]string{
		`<b>bold</b> <i>it</i> <code>c</code>`:                  `<b>bold</b> <i>it</i> <code>c</code>`,
		`<a href="https://ok.example/p">ok</a>`:                 `<a href="https://ok.example/p" rel="nofollow">ok</a>`,
		`<a href="mailto:a@ok.example">m</a>`:                   `<a href="mailto:a@ok.example" rel="nofollow">m</a>`,
		`<p style="color:red">s</p>`:                            `<p>s</p>`,
		`<img src=x onerror=alert(1)><script>alert(2)</script>`: `<img src="x">`,
		`a &lt; b`: `a &lt; b`,
	}
	for in, want := range keep {
		if got := SanitizeHTML(in); got != want {
			t.Errorf("SanitizeHTML(%q) = %q, want %q", in, got, want)
		}
	}
}

// unsafeHTML returns why an HTML fragment could run script or restyle the page, or "".
// Plain text such as "onerror" is harmless; only tags and attributes count.
func unsafeHTML(s string) string {
	if strings.Contains(strings.ToLower(s), "<script") {
		return "contains <script"
	}
	z := html.NewTokenizer(strings.NewReader(s))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			if z.Err() == io.EOF {
				return ""
			}
			return "tokenizer: " + z.Err().Error()
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken && tt != html.EndTagToken {
			continue
		}
		tok := z.Token()
		switch tok.Data {
		case "script", "iframe", "style", "object", "embed", "frame", "frameset", "link", "meta", "base", "form", "svg", "math":
			return "tag " + tok.Data
		}
		for _, a := range tok.Attr {
			key := strings.ToLower(a.Key)
			if strings.HasPrefix(key, "on") {
				return "event handler " + key
			}
			if key == "style" || key == "srcdoc" || key == "formaction" {
				return "attribute " + key
			}
			val := strings.Map(func(r rune) rune {
				if r <= ' ' || r == 0x7f {
					return -1 // browsers ignore these inside a URL scheme
				}
				return r
			}, strings.ToLower(a.Val))
			if strings.HasPrefix(val, "javascript:") || strings.HasPrefix(val, "vbscript:") || strings.HasPrefix(val, "data:text/html") {
				return "script URL in " + key
			}
		}
	}
}

// checkSafeOutput checks what Message or State accepted: canonical JSON of an object whose
// formatted bodies hold no script.
func checkSafeOutput(t *testing.T, typ string, out json.RawMessage) {
	t.Helper()
	canon, err := event.Canonical(out)
	if err != nil {
		t.Fatalf("accepted output is not canonicalizable: %v: %q", err, out)
	}
	if !bytes.Equal(canon, out) {
		t.Fatalf("accepted output is not canonical:\n got %q\nwant %q", out, canon)
	}
	var obj map[string]any
	if err := json.Unmarshal(out, &obj); err != nil || obj == nil {
		t.Fatalf("accepted output is not an object: %q", out)
	}
	for _, o := range []any{obj, obj["m.new_content"]} {
		m, ok := o.(map[string]any)
		if !ok {
			continue
		}
		fb, has := m["formatted_body"]
		if !has {
			continue
		}
		s, ok := fb.(string)
		if !ok {
			t.Fatalf("formatted_body is not a string: %q", out)
		}
		if reason := unsafeHTML(s); reason != "" {
			t.Fatalf("unsafe formatted_body %q: %s", s, reason)
		}
		if m["format"] != "org.matrix.custom.html" {
			t.Fatalf("formatted_body without its format: %q", out)
		}
	}
}

func FuzzMessageContent(f *testing.F) {
	for _, s := range []string{
		`{"msgtype":"m.text","body":"hi"}`,
		`{"msgtype":"m.notice","body":"x","format":"org.matrix.custom.html","formatted_body":"<b>x</b>"}`,
		`{"msgtype":"m.text","body":"r","m.relates_to":{"m.in_reply_to":{"event_id":"$abc"}}}`,
		`{"msgtype":"m.text","body":"* n","m.new_content":{"msgtype":"m.text","body":"n","formatted_body":"<img src=x onerror=alert(1)>"},"m.relates_to":{"rel_type":"m.replace","event_id":"$abc"}}`,
		`{"msgtype":"m.text","body":"x","n":1.5}`,
		`{"msgtype":"m.text","body":"\ud83d\ude00\u0000"}`,
		`{"a":{"b":[1,-0,9007199254740991,null,true]},"msgtype":"m.emote","body":""}`,
		` { "body" : "<b>&amp; \u00e9 \"q\" \/ \u2028", "msgtype" : "m.text" } `,
		`{"msgtype":"m.text","body":"x","format":"org.matrix.custom.html"}`,
		`[]`,
		``,
	} {
		f.Add("m.room.message", []byte(s))
	}
	for _, x := range xssInputs {
		f.Add("m.room.message", []byte(`{"msgtype":"m.text","body":"x","formatted_body":`+jsonString(x)+`}`))
	}
	f.Add("m.reaction", []byte(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"$abc","key":"👍"}}`))
	f.Add("m.reaction", []byte(`{"m.relates_to":{"rel_type":"m.annotation","event_id":"abc","key":"k"}}`))
	f.Add("m.room.name", []byte(`{"name":"x"}`))
	for _, s := range plainMessageSeeds {
		f.Add("m.room.message", []byte(s))
	}
	f.Fuzz(func(t *testing.T, typ string, raw []byte) {
		out, err := Message(typ, raw)
		// The plain-message shortcut answers exactly what decoding, checking and encoding
		// again would.
		if canon, cerr := canonical(raw); cerr == nil && len(raw) <= MaxContentBytes && typ == "m.room.message" && plainMessage(canon) {
			full, ferr := decodedMessage(typ, canon)
			if ferr != nil || !bytes.Equal(full, out) || err != nil {
				t.Fatalf("plain message %q: shortcut gives %q (%v), the full check %q (%v)", raw, out, err, full, ferr)
			}
		}
		if err != nil {
			if out != nil || (err.Code != codeInvalid && err.Code != codeTooLarge) {
				t.Fatalf("refusal %v with output %q", err, out)
			}
			return
		}
		if !SendableTypes[typ] {
			t.Fatalf("accepted type %q", typ)
		}
		checkSafeOutput(t, typ, out)
		// Accepted content is a fixed point: decoding and encoding it again changes nothing, so
		// the plain-message shortcut (no second encoding) gives what encoding again would.
		obj, _, oerr := object(out)
		if oerr != nil {
			t.Fatalf("accepted content %q does not read back: %v", out, oerr)
		}
		if again, eerr := encode(obj); eerr != nil || !bytes.Equal(again, out) {
			t.Fatalf("content %q encodes again as %q (%v)", out, again, eerr)
		}
	})
}

// plainMessageSeeds sit on either side of the plain-message shortcut's edges.
var plainMessageSeeds = []string{
	`{"body":"","msgtype":"m.text"}`,
	`{"body":"x","msgtype":"m.unknown"}`,
	`{"body":"x","msgtype":"m.text","z":1}`,
	`{"body":"a\"b","msgtype":"m.notice"}`,
	`{"body":"x","msgtype":"m.te\u0078t"}`,
	`{"body":"\u0000","msgtype":"m.text"}`,
	`{"body":1,"msgtype":"m.text"}`,
	`{"body":"x","msgtype":"m.emote"}` + " ",
	`{"body":"` + strings.Repeat("x", MaxBodyBytes) + `","msgtype":"m.text"}`,
	`{"body":"` + strings.Repeat("x", MaxBodyBytes+1) + `","msgtype":"m.text"}`,
}

func TestPlainMessageShortcut(t *testing.T) {
	for _, c := range []struct {
		raw   string
		plain bool
	}{
		{`{"msgtype":"m.text","body":"hi"}`, true},
		{`{"body":"","msgtype":"m.emote"}`, true},
		{`{"body":"` + strings.Repeat("x", MaxBodyBytes) + `","msgtype":"m.text"}`, true},
		{`{"body":"` + strings.Repeat("x", MaxBodyBytes+1) + `","msgtype":"m.text"}`, false},
		{`{"body":"x","msgtype":"m.unknown"}`, false},
		{`{"body":"x","msgtype":"m.text","z":1}`, false},
		{`{"body":"a\"b","msgtype":"m.text"}`, false},
		{`{"body":1,"msgtype":"m.text"}`, false},
		{`{"msgtype":"m.text"}`, false},
	} {
		canon, err := canonical(json.RawMessage(c.raw))
		if err != nil {
			t.Fatalf("%s: %v", c.raw, err)
		}
		if got := plainMessage(canon); got != c.plain {
			t.Errorf("plainMessage(%s) = %v, want %v", canon, got, c.plain)
		}
	}
}

func FuzzStateContent(f *testing.F) {
	for _, seed := range []struct{ typ, raw string }{
		{"m.room.name", `{"name":"General"}`},
		{"m.room.name", `{"name":"<script>x</script>","extra":[1,2]}`},
		{"m.room.topic", `{"topic":"t\u2028"}`},
		{"m.room.topic", `{"topic":1.0}`},
		{"m.room.power_levels", `{"users":{"@a:b":100},"ban":50,"kick":50,"redact":50,"state_default":50}`},
		{"m.room.power_levels", `{"users":{"@a:b":9007199254740991},"events":{"m.room.name":-5}}`},
		{"m.room.power_levels", `{"users":{"a":1}}`},
		{"m.room.power_levels", `{"users":null,"events":null}`},
		{"m.room.create", `{}`},
		{"m.room.name", `null`},
	} {
		f.Add(seed.typ, []byte(seed.raw))
	}
	f.Fuzz(func(t *testing.T, typ string, raw []byte) {
		out, err := State(typ, raw)
		if err != nil {
			if out != nil || (err.Code != codeInvalid && err.Code != codeTooLarge) {
				t.Fatalf("refusal %v with output %q", err, out)
			}
			return
		}
		if !StateTypes[typ] {
			t.Fatalf("accepted type %q", typ)
		}
		checkSafeOutput(t, typ, out)
		if typ == "m.room.power_levels" {
			var pl state.PowerLevels
			if err := json.Unmarshal(out, &pl); err != nil {
				t.Fatalf("accepted power levels do not decode: %v", err)
			}
			// Stable: what was accepted is accepted again unchanged.
			again, err2 := State(typ, out)
			if err2 != nil || !bytes.Equal(again, out) {
				t.Fatalf("power levels not stable: %q -> %q (%v)", out, again, err2)
			}
		}
	})
}

func BenchmarkMessage(b *testing.B) {
	for _, c := range []struct{ name, raw string }{
		{"plain", `{"msgtype":"m.text","body":"hello, this is a message of ordinary length"}`},
		{"formatted", `{"msgtype":"m.text","body":"hi","format":"org.matrix.custom.html","formatted_body":"<b>hi</b>"}`},
	} {
		raw := json.RawMessage(c.raw)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Message("m.room.message", raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
