package envelope

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func hop(node string) Hop {
	return Hop{Node: node, Hash: sha256.Sum256([]byte(node)), Received: time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC)}
}

func TestReceiveStripsTraceAndHashesTheRest(t *testing.T) {
	plain := "From: a@example.com\r\nSubject: hi\r\n  folded\r\n\r\nbody X-Chainmail-Trace: not a header\r\n"
	withTrace := hop("a").Field() + "From: a@example.com\r\nx-chainmail-trace: node=b;\r\n hash=" + hop("b").Hash.String() + "\r\nSubject: hi\r\n  folded\r\n\r\nbody X-Chainmail-Trace: not a header\r\n"
	for _, parse := range []bool{false, true} {
		res, err := Receive(strings.NewReader(withTrace), SpoolOptions{Threshold: 1 << 20, ParseTrace: parse})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(res.Body.Reader())
		if string(got) != plain {
			t.Fatalf("stripped bytes:\n%q\nwant\n%q", got, plain)
		}
		if res.Hash != Hash(sha256.Sum256([]byte(plain))) {
			t.Fatal("hash is not the SHA-256 of the stripped bytes")
		}
		if parse && (len(res.Trace) != 2 || res.Trace[0].Node != "a" || res.Trace[1].Node != "b") {
			t.Fatalf("trace = %+v", res.Trace)
		}
		if !parse && len(res.Trace) != 0 {
			t.Fatal("trace parsed on a listener that must ignore it")
		}
	}
}

func TestReceiveSpoolsPastThreshold(t *testing.T) {
	dir := t.TempDir()
	msg := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 10000)
	res, err := Receive(strings.NewReader(msg), SpoolOptions{Dir: dir, Threshold: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if res.Body.Bytes() != nil {
		t.Fatal("large message kept in memory")
	}
	got, _ := io.ReadAll(res.Body.Reader())
	if string(got) != msg || res.Body.Size() != int64(len(msg)) {
		t.Fatal("spooled bytes differ")
	}
	if !bytes.HasPrefix(res.Body.Head(20), []byte("Subject: big")) {
		t.Fatal("head")
	}
	res.Body.Close()
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("spool file left behind: %v", ents)
	}
}

func TestReceiveErrorsLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	big := "Subject: x\r\n\r\n" + strings.Repeat("y", 10000)
	cases := map[string]io.Reader{
		"bare LF in header": strings.NewReader("Subject: x\nFrom: y\r\n\r\n"),
		"bare LF in body":   strings.NewReader(big + "\n"),
		"client went away":  io.MultiReader(strings.NewReader(big), iotestErr{}),
	}
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Receive(r, SpoolOptions{Dir: dir, Threshold: 4096})
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.HasPrefix(name, "bare") && !errors.Is(err, ErrBareLF) {
				t.Fatalf("err = %v", err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("spool file left behind: %v", ents)
			}
		})
	}
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestHopRoundTrip(t *testing.T) {
	h := hop("node-1")
	got, err := ParseHop(strings.TrimPrefix(strings.TrimSuffix(h.Field(), "\r\n"), TraceHeader+": "))
	if err != nil || got.Node != h.Node || got.Hash != h.Hash || !got.Received.Equal(h.Received) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, bad := range []string{"", "node=a", "hash=" + h.Hash.String(), "node=; hash=00", "node=a b; hash=" + h.Hash.String()} {
		if _, err := ParseHop(bad); err == nil {
			t.Errorf("ParseHop(%q) accepted", bad)
		}
	}
	tr := Trace{hop("a"), hop("b")}
	if !tr.Has("b") || tr.Has("c") || tr.Origin() != "a" {
		t.Fatal("trace queries")
	}
}

func FuzzReceive(f *testing.F) {
	f.Add([]byte(hop("a").Field() + "Subject: x\r\n\r\nbody\r\n"))
	f.Add([]byte("X-Chainmail-Trace: node=a; hash=zz\r\n\r\n"))
	f.Add([]byte("no header line\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := Receive(bytes.NewReader(data), SpoolOptions{Dir: t.TempDir(), Threshold: 64, ParseTrace: true})
		if err != nil {
			return
		}
		defer res.Body.Close()
		got, _ := io.ReadAll(res.Body.Reader())
		if int64(len(got)) != res.Body.Size() || len(got) > len(data) {
			t.Fatalf("size %d of %d input bytes", len(got), len(data))
		}
		if Hash(sha256.Sum256(got)) != res.Hash {
			t.Fatal("hash mismatch")
		}
		// Receiving the stripped bytes again changes nothing: identity is stable across hops.
		again, err := Receive(bytes.NewReader(got), SpoolOptions{Dir: t.TempDir(), Threshold: 64})
		if err != nil || again.Hash != res.Hash {
			t.Fatalf("not idempotent: %v", err)
		}
		again.Body.Close()
	})
}

func TestSpoolerBareLFAcrossWrites(t *testing.T) {
	cases := []struct {
		name   string
		writes []string
		bad    int // index of the write that must fail, -1 for none
	}{
		{"CRLF in one write", []string{"a\r\nb\r\n"}, -1},
		{"CR ends a write, LF starts the next", []string{"a\r", "\nb\r", "\n"}, -1},
		{"LF first of all", []string{"\n"}, 0},
		{"LF after a byte of the previous write", []string{"a", "\n"}, 1},
		{"bare LF after good lines", []string{"a\r\nb\r\n", "c\r\nd\ne"}, 1},
		{"CR CR LF", []string{"\r\r\n"}, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &spooler{opts: SpoolOptions{Threshold: 1 << 20}, h: sha256.New(), buf: getSpoolBuffer()}
			defer s.discard()
			for i, w := range c.writes {
				n, err := s.Write([]byte(w))
				if i == c.bad {
					if !errors.Is(err, ErrBareLF) || w[n] != '\n' {
						t.Fatalf("write %d: n=%d err=%v, want ErrBareLF at the LF", i, n, err)
					}
					return
				}
				if err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			if c.bad >= 0 {
				t.Fatal("bare LF accepted")
			}
		})
	}
}

func TestHashJSON(t *testing.T) {
	h := hop("a")
	b, err := json.Marshal(h)
	if err != nil || !strings.Contains(string(b), `"hash":"`+h.Hash.String()+`"`) {
		t.Fatalf("%s %v", b, err)
	}
	var back Hop
	if err := json.Unmarshal(b, &back); err != nil || back.Hash != h.Hash {
		t.Fatalf("round trip: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"hash":"zz"}`), &back); err == nil {
		t.Fatal("bad hash accepted")
	}
}
