package journal

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse feeds the corpus, and what the fuzzer derives from it, to Parse:
// it must never panic, never modify its input, and every report it returns
// must keep the package's invariants (checkInvariants). Crashers found are
// kept under testdata/fuzz/FuzzParse as regression seeds.
func FuzzParse(f *testing.F) {
	files, err := filepath.Glob("testdata/*.eml")
	if err != nil {
		f.Fatal(err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(nestReports(6)))
	f.Fuzz(func(t *testing.T, msg []byte) {
		orig := bytes.Clone(msg)
		rep, err := Parse(msg)
		if !bytes.Equal(msg, orig) {
			t.Fatal("Parse modified its input")
		}
		if err != nil {
			if rep != nil {
				t.Fatal("a report and an error")
			}
			if len(err.Error()) < len("journal: ") || err.Error()[:9] != "journal: " {
				t.Fatalf("error without the package prefix: %q", err)
			}
			return
		}
		checkInvariants(t, msg, rep)
		// A small-buffer ReaderAt must give the same answer as the slice.
		rep2, err := Parser{}.Parse(memReaderAt{msg}, int64(len(msg)))
		if err != nil || rep2.Sender != rep.Sender || len(rep2.Recipients) != len(rep.Recipients) {
			t.Fatalf("ReaderAt parse differs: %v", err)
		}
	})
}
