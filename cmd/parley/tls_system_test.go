package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// testCA issues certificates for loopback nodes.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	writePEM(t, filepath.Join(ca.dir, "ca.crt"), "CERTIFICATE", der)
	return ca
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue writes NAME.crt and NAME.key for 127.0.0.1/localhost and returns their paths.
func (ca *testCA) issue(t *testing.T, name string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	crt, keyPath := filepath.Join(ca.dir, name+".crt"), filepath.Join(ca.dir, name+".key")
	writePEM(t, crt, "CERTIFICATE", der)
	kder, _ := x509.MarshalECPrivateKey(key)
	writePEM(t, keyPath, "EC PRIVATE KEY", kder)
	return crt, keyPath
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func TestTLSWebSocketEndToEnd(t *testing.T) {
	ca := newTestCA(t)
	crt, key := ca.issue(t, "web")
	p := startSingle(t, "tls", "PARLEY_TLS_CERT_FILE="+crt, "PARLEY_TLS_KEY_FILE="+key)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool()}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := client.Get("https://" + p.http + "/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no HTTPS health: %v\n%s", err, p.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Plain HTTP is not served.
	if resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + p.http + "/v1/health"); err == nil {
		if resp.StatusCode < 400 {
			t.Fatalf("plain HTTP answered %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
	resp, err := client.Post("https://"+p.http+"/v1/register", "application/json",
		strings.NewReader(`{"username":"tlsuser","password":"password123"}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("register over https: %v %v", err, resp)
	}
	var reg struct {
		Token string `json:"access_token"`
	}
	decodeJSON(t, resp, &reg)
	dialer := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.pool()}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := dialer.DialContext(context.Background(), "wss://"+p.http+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteJSON(map[string]any{"op": "auth", "id": "1", "token": reg.Token}); err != nil {
		t.Fatal(err)
	}
	var reply map[string]any
	if err := ws.ReadJSON(&reply); err != nil || reply["op"] != "ok" {
		t.Fatalf("auth over wss: %v %v", err, reply)
	}
	// A client that does not trust the CA is refused by the TLS handshake.
	if _, _, err := websocket.DefaultDialer.Dial("wss://"+p.http+"/v1/ws", nil); err == nil {
		t.Fatal("an untrusted certificate was accepted by the default dialer")
	}
}

func TestTLSClusterMutualAuth(t *testing.T) {
	ca := newTestCA(t)
	rogue := newTestCA(t) // a certificate from another CA must be refused
	var certEnv [][]string
	for i := 1; i <= 3; i++ {
		issuer := ca
		if i == 3 {
			issuer = rogue
		}
		crt, key := issuer.issue(t, fmt.Sprintf("n%d", i))
		certEnv = append(certEnv, []string{"PARLEY_CLUSTER_TLS_CERT_FILE=" + crt, "PARLEY_CLUSTER_TLS_KEY_FILE=" + key,
			"PARLEY_CLUSTER_TLS_CA_FILE=" + filepath.Join(ca.dir, "ca.crt")})
	}
	nodes := startClusterWith(t, 3, "", func(i int, p *proc) { p.env = append(p.env, certEnv[i]...) })
	leader := waitLeader(t, nodes[0], nodes[1])
	tok := register(t, leader, "mtls")
	c := dial(t, nodes[0], tok)
	must(t, c, map[string]any{"op": "create_room"})
	time.Sleep(time.Second)
	if h := getHealth(nodes[2]); h.code == http.StatusOK {
		t.Fatalf("the node with a rogue certificate joined: %+v", h)
	}
	if !strings.Contains(nodes[0].logs()+nodes[1].logs()+nodes[2].logs(), "certificate") {
		t.Fatal("no certificate refusal logged")
	}
}

func decodeJSON(t *testing.T, resp *http.Response, v any) {
	t.Helper()
	defer resp.Body.Close()
	if err := jsonNewDecoder(resp).Decode(v); err != nil {
		t.Fatal(err)
	}
}
