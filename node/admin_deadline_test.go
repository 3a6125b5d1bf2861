package node

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestAdminAnswersOutlastTheHTTPWriteDeadline: an admin call that takes longer than the write
// deadline every HTTP answer gets (a snapshot of a large state, a join waiting for its node to
// catch up) still gets its answer; it used to be cut off, and `parley cluster snapshot`
// reported a failure for a snapshot that was taken.
func TestAdminAnswersOutlastTheHTTPWriteDeadline(t *testing.T) {
	old := httpWriteTimeout.Load()
	httpWriteTimeout.Store(int64(100 * time.Millisecond))
	t.Cleanup(func() { httpWriteTimeout.Store(old) })

	srv := &Server{opts: Options{ClusterSecret: "s3cret"}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/cluster/slow", srv.clusterAdmin(func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(300 * time.Millisecond)
		writeJSON(w, http.StatusOK, map[string]any{"done": true})
	}))
	ts := httptest.NewServer(jsonRouteErrors(mux))
	defer ts.Close()

	req, err := http.NewRequest("POST", ts.URL+"/v1/cluster/slow", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Parley-Cluster-Secret", "s3cret")
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatalf("the admin call's answer was cut off: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != "{\"done\":true}\n" {
		t.Fatalf("answer %d %q (%v)", resp.StatusCode, body, err)
	}
}
