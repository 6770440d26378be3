package journal

import (
	"bytes"
	"strings"
	"testing"
)

// BenchmarkParse measures a typical report: a dozen recipients and a
// 60 KiB original.
func BenchmarkParse(b *testing.B) {
	var env strings.Builder
	env.WriteString("Sender: alice@contoso.example\nSubject: Quarterly numbers\nMessage-Id: <o@contoso.example>\n")
	for i := range 12 {
		env.WriteString("To: user")
		env.WriteString(strings.Repeat("x", i))
		env.WriteString("@contoso.example, Expanded: all@contoso.example\n")
	}
	body := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\n", 1000)
	msg := []byte(buildReport("_jr_bench_", env.String(), plainOriginal+"\n"+body))
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		rep, err := Parse(msg)
		if err != nil || len(rep.Recipients) != 12 {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseCorpusBasic is the smallest real-shaped report.
func BenchmarkParseCorpusBasic(b *testing.B) {
	msg := readCorpus(b, "basic.eml")
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (Parser{}).Parse(bytes.NewReader(msg), int64(len(msg))); err != nil {
			b.Fatal(err)
		}
	}
}
