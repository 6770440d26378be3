package journal

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestUnwrapNDR(t *testing.T) {
	t.Parallel()
	report := readCorpus(t, "basic.eml")
	for _, tc := range []struct {
		file     string
		err      error
		rcpts    []string
		encoding string
	}{
		{file: "ndr/report.eml", rcpts: []string{"journal@archive.example", "journal2@archive.example"}},
		{file: "ndr/report-base64.eml", rcpts: []string{"journal@archive.example"}, encoding: "base64"},
		{file: "ndr/headers-only.eml", err: ErrNotNDR},
		{file: "basic.eml", err: ErrNotNDR},      // a report, not bounced
		{file: "not-report.eml", err: ErrNotNDR}, // ordinary mail
	} {
		t.Run(tc.file, func(t *testing.T) {
			msg := readCorpus(t, tc.file)
			ndr, err := Parser{}.UnwrapNDR(bytes.NewReader(msg), int64(len(msg)))
			if tc.err != nil {
				if !errors.Is(err, tc.err) || ndr != nil {
					t.Fatalf("got %+v, %v; want %v", ndr, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ndr.Recipients, tc.rcpts) || ndr.Report.Encoding != tc.encoding {
				t.Errorf("recipients %v encoding %q", ndr.Recipients, ndr.Report.Encoding)
			}
			got, err := ndr.Report.Bytes(msg)
			if err != nil {
				t.Fatal(err)
			}
			// The line break before the NDR's boundary belongs to the
			// delimiter; a base64 copy keeps the report's last one.
			if want := bytes.TrimSuffix(report, []byte("\r\n")); !bytes.Equal(bytes.TrimSuffix(got, []byte("\r\n")), want) {
				t.Errorf("returned report differs:\n%q", got)
			}
			if _, err := Parse(got); err != nil {
				t.Errorf("the returned report does not parse: %v", err)
			}
		})
	}
}

func TestStatusRecipients(t *testing.T) {
	t.Parallel()
	body := "Reporting-MTA: dns; mx\r\n\r\nFinal-Recipient: rfc822; <a@x.example>\r\nAction: failed\r\n\r\n" +
		"Original-Recipient: rfc822;B@x.example\r\nFinal-Recipient: rfc822;b-alias@x.example\r\n\r\n" +
		"Final-Recipient: x400; /c=us/\r\n\r\nFinal-Recipient: rfc822;a@x.example\r\n"
	if got := statusRecipients(body); !slices.Equal(got, []string{"a@x.example", "B@x.example"}) {
		t.Fatalf("got %v", got)
	}
}

// FuzzUnwrapNDR: no input makes UnwrapNDR panic or locate a report
// outside its input.
func FuzzUnwrapNDR(f *testing.F) {
	files, _ := filepath.Glob("testdata/ndr/*.eml")
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		ndr, err := Parser{}.UnwrapNDR(bytes.NewReader(msg), int64(len(msg)))
		if err != nil {
			if ndr != nil {
				t.Fatal("an NDR and an error")
			}
			return
		}
		p := ndr.Report
		if p.Offset < 0 || p.Length < 0 || p.Offset+p.Length > int64(len(msg)) {
			t.Fatalf("report at %d+%d outside %d bytes", p.Offset, p.Length, len(msg))
		}
		if _, err := p.Bytes(msg); err != nil && p.Raw() {
			t.Fatalf("raw part unreadable: %v", err)
		}
	})
}
