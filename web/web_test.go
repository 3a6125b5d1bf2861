package web

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, method, path string, hdr map[string]string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, req)
	return rec.Result()
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func checkSecurityHeaders(t *testing.T, resp *http.Response) {
	t.Helper()
	want := map[string]string{
		"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
			"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'",
		"X-Frame-Options":        "DENY",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
	}
	for k, v := range want {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s: got %q, want %q", k, got, v)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	// ws: and wss: alone would let the page connect to any host; 'self' covers its own node's.
	for _, bad := range []string{"unsafe-inline", "unsafe-eval", "*", "ws:", "wss:"} {
		if strings.Contains(csp, bad) {
			t.Errorf("CSP allows %s: %q", bad, csp)
		}
	}
}

func TestIndexServedWithSecurityHeaders(t *testing.T) {
	for _, path := range []string{"/", "/index.html"} {
		resp := get(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, resp.StatusCode)
		}
		checkSecurityHeaders(t, resp)
		if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("GET %s: Content-Type %q", path, ct)
		}
		html := body(t, resp)
		if !strings.Contains(html, `<div id="app">`) || !strings.Contains(html, `src="app.js"`) {
			t.Fatalf("GET %s: not the client's index.html:\n%s", path, html)
		}
		// The CSP forbids inline script and style: the page must not need them.
		if m := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>`).FindAllString(html, -1); len(m) == 0 {
			t.Error("index.html loads no script")
		} else {
			for _, tag := range m {
				if !strings.Contains(tag, "src=") {
					t.Errorf("inline script in index.html: %s", tag)
				}
			}
		}
		if regexp.MustCompile(`(?i)<style|\sstyle=|\son[a-z]+=`).MatchString(html) {
			t.Error("index.html has an inline style or event handler")
		}
	}
}

func TestAssetsServed(t *testing.T) {
	for path, ct := range map[string]string{
		"/app.js":      "text/javascript; charset=utf-8",
		"/app.css":     "text/css; charset=utf-8",
		"/favicon.svg": "image/svg+xml",
	} {
		resp := get(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: status %d", path, resp.StatusCode)
		}
		checkSecurityHeaders(t, resp)
		if got := resp.Header.Get("Content-Type"); got != ct {
			t.Errorf("GET %s: Content-Type %q, want %q", path, got, ct)
		}
		if len(body(t, resp)) == 0 {
			t.Errorf("GET %s: empty", path)
		}
	}
}

func TestNotFoundAndMethods(t *testing.T) {
	for _, path := range []string{"/nope.js", "/dist/app.js", "/../web.go", "/v1/unknown"} {
		resp := get(t, http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, resp.StatusCode)
		}
		checkSecurityHeaders(t, resp)
	}
	resp := get(t, http.MethodPost, "/", nil)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", resp.StatusCode)
	}
	resp = get(t, http.MethodHead, "/", nil)
	if resp.StatusCode != http.StatusOK || body(t, resp) != "" {
		t.Errorf("HEAD /: status %d", resp.StatusCode)
	}
}

func TestETagAndGzip(t *testing.T) {
	resp := get(t, http.MethodGet, "/app.js", nil)
	etag := resp.Header.Get("ETag")
	plain := body(t, resp)
	if etag == "" {
		t.Fatal("no ETag")
	}
	resp = get(t, http.MethodGet, "/app.js", map[string]string{"If-None-Match": etag})
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", resp.StatusCode)
	}
	checkSecurityHeaders(t, resp)

	resp = get(t, http.MethodGet, "/app.js", map[string]string{"Accept-Encoding": "gzip, br"})
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("no gzip: %v", resp.Header)
	}
	if resp.Header.Get("ETag") == etag {
		t.Error("gzip answer has the same ETag as the plain one")
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	unz, _ := io.ReadAll(zr)
	if string(unz) != plain {
		t.Error("gzip body differs from the plain body")
	}
	resp = get(t, http.MethodGet, "/app.js", map[string]string{"Accept-Encoding": "gzip;q=0"})
	if resp.Header.Get("Content-Encoding") != "" {
		t.Error("gzip sent although refused with q=0")
	}
}
