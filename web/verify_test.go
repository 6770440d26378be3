package web

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"chainmail/archive"
	"chainmail/internal/envelope"
	"chainmail/internal/store"
	"chainmail/internal/testutil"
)

func TestVerifyEndpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v.db")
	db, err := store.Open(path, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(); testutil.CheckBolt(t, path) })
	a, _ := archive.Open(db)
	b := []byte("Subject: verify\r\n\r\nbody\r\n")
	it := &archive.Item{Hash: sha256.Sum256(b), Body: envelope.BodyFromBytes(b), Receipt: envelope.Receipt{Received: time.Now()}}
	archive.Prepare(it)
	if err := db.Update(context.Background(), func(tx *bolt.Tx) error { _, err := a.PutTx(tx, it); return err }); err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, a, nil)
	if w := do(t, s, request{path: "/api/v1/archive/verify", token: readOnlyToken}); w.Code != http.StatusForbidden {
		t.Fatalf("read-only: %d", w.Code)
	}
	w := do(t, s, request{path: "/api/v1/archive/verify", token: adminToken})
	var v archive.Verification
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &v) != nil || v.Messages != 1 || len(v.Damaged) != 0 {
		t.Fatalf("admin: %d %s", w.Code, w.Body)
	}
}
