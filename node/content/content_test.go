package content

import (
	"fmt"
	"testing"
)

func TestProbe(t *testing.T) {
	for _, s := range []string{
		`<img src=x onerror=alert(1)><script>alert(2)</script>`,
		`<a href="javascript:alert(1)">x</a>`,
		`<a href="JaVaScRiPt:alert(1)">x</a>`,
		`<a href="&#106;avascript:alert(1)">x</a>`,
		`<p style="color:red">s</p>`,
		`<iframe src="https://evil.example"></iframe>ok`,
		`<b onclick="x()">b</b>`,
		`<a href="https://ok.example">ok</a>`,
		`onerror javascript: text`,
		`<svg><script>alert(1)</script></svg>`,
		`&lt;script&gt;`,
		`<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>`,
		`<<script>script>alert(1)<</script>/script>`,
	} {
		out := SanitizeHTML(s)
		fmt.Printf("%q\n  -> %q\n  -> %q\n", s, out, SanitizeHTML(out))
	}
}
