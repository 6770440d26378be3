package testutil

import (
	"testing"

	bolt "go.etcd.io/bbolt"
)

// CheckBolt asserts that the bbolt file at path is consistent, as bbolt's
// own tests do after each test. Store tests call it in their cleanup.
func CheckBolt(tb testing.TB, path string) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 1e9})
	if err != nil {
		tb.Fatalf("check %s: %v", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		for e := range tx.Check() {
			tb.Errorf("check %s: %v", path, e)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}
