package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/config"
	"github.com/parley-chat/parley/federation"
)

// fixedKey is a signing key made from a fixed seed, so that seeds never change.
func fixedKey(id string, b byte) *federation.SigningKey {
	return &federation.SigningKey{KeyID: id, Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))}
}

func fuzzFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func configErrorKey(t *testing.T, err error) string {
	t.Helper()
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("not a *config.Error: %T %v", err, err)
	}
	return ce.Key
}

// FuzzKeyFile reads federation.key_file as parley serve does before starting (checkKeyFile,
// federation.ParseKey). It never panics; a file it refuses is a federation.key_file error; a
// key it accepts writes (Marshal) a file that reads back to the same key, whose public key
// string parses back to its public key, and which signs what its public key verifies.
func FuzzKeyFile(f *testing.F) {
	for _, k := range []*federation.SigningKey{fixedKey("k1", 1), fixedKey("Ab_9", 0xff)} {
		f.Add(k.Marshal()) // as parley keygen writes it
		f.Add(bytes.ReplaceAll(k.Marshal(), []byte(" "), []byte("\t\r\n ")))
		f.Add(append([]byte("\ufeff"), k.Marshal()...))
	}
	seed := base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))
	for _, s := range []string{
		"ed25519 k1 " + seed + "=",         // padded
		"ed25519 k1 " + seed[:len(seed)-1], // short
		"ed25519 k-1 " + seed,              // key id out of its grammar
		"ed25519 k1 " + seed + " extra",    // a fourth field
		"ed25519 k1 " + seed[:42] + "B",    // non-zero trailing bits
		"Ed25519 k1 " + seed, "", "ed25519\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		path := fuzzFile(t, t.TempDir(), "org.key", data)
		err := checkKeyFile(path)
		key, perr := federation.ParseKey(data)
		if (err == nil) != (perr == nil) {
			t.Fatalf("checkKeyFile %v, ParseKey %v", err, perr)
		}
		if err != nil {
			if k := configErrorKey(t, err); k != "federation.key_file" {
				t.Fatalf("error names %q", k)
			}
			return
		}
		back, err := federation.ParseKey(key.Marshal())
		if err != nil || back.KeyID != key.KeyID || !back.Private.Equal(key.Private) {
			t.Fatalf("%q read as %+v, which writes %q, read back as %+v (%v)", data, key, key.Marshal(), back, err)
		}
		id, pub, err := federation.ParsePublicKey(key.PublicKeyString())
		if err != nil || id != key.KeyID || !pub.Equal(key.Private.Public()) {
			t.Fatalf("public key %q: %q %x %v", key.PublicKeyString(), id, pub, err)
		}
		if !ed25519.Verify(pub, []byte("m"), ed25519.Sign(key.Private, []byte("m"))) {
			t.Fatal("the key's signature does not verify with its public key")
		}
	})
}

// FuzzPublicKeys parses federation peers' and this org's previous public keys
// (parsePublicKeys, federation.ParsePublicKey): never a panic; the first key it cannot parse is
// named in its error; keys it accepts write back as "ed25519:KEYID:BASE64", which parses to the
// same keys.
func FuzzPublicKeys(f *testing.F) {
	a, b := fixedKey("k1", 1).PublicKeyString(), fixedKey("old_2", 2).PublicKeyString()
	f.Add(a + "\n" + b)
	f.Add(a)
	f.Add(a + "=")
	f.Add(strings.Replace(a, "ed25519:", "ed25519::", 1))
	f.Add(b + "\n" + a[:len(a)-2] + "\n" + a)
	f.Add("ed25519:k1:" + base64.StdEncoding.EncodeToString(make([]byte, 32)))
	f.Add("ed25519:k1:AAAA:AAAA")
	f.Fuzz(func(t *testing.T, list string) {
		keys := strings.Split(list, "\n")
		out, err := parsePublicKeys("federation.previous_keys", keys)
		bad := -1
		for i, k := range keys {
			if _, _, err := federation.ParsePublicKey(k); err != nil {
				bad = i
				break
			}
		}
		if bad >= 0 {
			if err == nil {
				t.Fatalf("%q accepted, with key %d unparsable", keys, bad)
			}
			if k, want := configErrorKey(t, err), "federation.previous_keys["+strconv.Itoa(bad)+"]"; k != want {
				t.Fatalf("error names %q, want %q", k, want)
			}
			return
		}
		if err != nil || len(out) != len(keys) {
			t.Fatalf("%q: %d keys, %v", keys, len(out), err)
		}
		for i, k := range out {
			s := "ed25519:" + k.KeyID + ":" + base64.RawStdEncoding.EncodeToString(k.Public)
			id, pub, err := federation.ParsePublicKey(s)
			if err != nil || id != k.KeyID || !pub.Equal(k.Public) || !strings.HasPrefix(keys[i], "ed25519:"+k.KeyID+":") {
				t.Fatalf("%q read as %q %x, written %q, read back %q %x %v", keys[i], k.KeyID, k.Public, s, id, pub, err)
			}
		}
	})
}

// tlsFiles makes a CA and a node certificate signed by it, with ed25519 keys from fixed seeds
// (ed25519 signatures are deterministic): PEM files as an operator would have them.
func tlsFiles(tb testing.TB) (caPEM, certPEM, keyPEM []byte) {
	tb.Helper()
	caKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	nodeKey := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{4}, 32))
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "parley test CA"},
		NotBefore: start, NotAfter: start.AddDate(20, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(nil, ca, ca, caKey.Public(), caKey)
	if err != nil {
		tb.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		tb.Fatal(err)
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: start, NotAfter: start.AddDate(20, 0, 0), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, DNSNames: []string{"localhost"}}
	leafDER, err := x509.CreateCertificate(nil, leaf, caCert, nodeKey.Public(), caKey)
	if err != nil {
		tb.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(nodeKey)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
}

// FuzzTLSFiles loads tls.cert_file and tls.key_file (loadCert) and the cluster's mutual TLS
// files (clusterTLS). Neither panics; each succeeds exactly when the pair is a certificate with
// its private key (and, for the cluster, the CA file holds a certificate); each error is a
// *config.Error naming the file at fault: the key file only when the certificate file does
// hold a certificate.
func FuzzTLSFiles(f *testing.F) {
	caPEM, certPEM, keyPEM := tlsFiles(f)
	other, err := x509.MarshalPKCS8PrivateKey(ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		f.Fatal(err)
	}
	otherKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: other})
	f.Add(certPEM, keyPEM, caPEM)
	f.Add(append(bytes.Clone(certPEM), caPEM...), keyPEM, caPEM) // a chain
	f.Add(certPEM, otherKey, caPEM)
	f.Add(keyPEM, certPEM, caPEM)
	f.Add(certPEM, keyPEM, keyPEM)
	f.Add(certPEM[:len(certPEM)/2], keyPEM, []byte{})
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), keyPEM, caPEM)
	f.Fuzz(func(t *testing.T, cert, key, ca []byte) {
		dir := t.TempDir()
		files := config.ClusterTLSConfig{CertFile: fuzzFile(t, dir, "cert.pem", cert), KeyFile: fuzzFile(t, dir, "key.pem", key),
			CAFile: fuzzFile(t, dir, "ca.pem", ca)}
		_, pairErr := tls.X509KeyPair(cert, key)
		reloader, err := loadCert(config.TLSConfig{CertFile: files.CertFile, KeyFile: files.KeyFile})
		if (err == nil) != (pairErr == nil) {
			t.Fatalf("loadCert: %v, but the pair: %v", err, pairErr)
		}
		if err != nil {
			switch k := configErrorKey(t, err); {
			case k == "tls.key_file" && !holdsCertificate(cert), k != "tls.key_file" && k != "tls.cert_file":
				t.Fatalf("loadCert blames %q: %v", k, err)
			}
		} else if c, err := reloader.GetCertificate(nil); err != nil || c == nil || len(c.Certificate) == 0 {
			t.Fatalf("loadCert serves %v (%v)", c, err)
		}
		server, client, err := clusterTLS(files)
		caOK := x509.NewCertPool().AppendCertsFromPEM(ca)
		if (err == nil) != (pairErr == nil && caOK) {
			t.Fatalf("clusterTLS: %v, but the pair: %v, the CA file holds a certificate: %v", err, pairErr, caOK)
		}
		if err != nil {
			if k := configErrorKey(t, err); k != "cluster.tls.cert_file" && k != "cluster.tls.ca_file" || k == "cluster.tls.ca_file" && pairErr != nil {
				t.Fatalf("clusterTLS blames %q: %v", k, err)
			}
			return
		}
		if server.ClientCAs == nil || client.RootCAs == nil || len(server.Certificates) != 1 || server.ClientAuth != tls.RequireAndVerifyClientCert {
			t.Fatalf("clusterTLS built %+v, %+v", server, client)
		}
	})
}
