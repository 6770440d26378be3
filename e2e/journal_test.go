package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"chainmail/internal/testutil"
	"chainmail/journal"
)

// roToken is the read-only token of the journal tests' nodes.
const roToken = "read-only-token-0123456789abcdef"

// journalNode is a node of a two-node chain whose journal listener decodes
// archive+bob=contoso.example@archive.example sub-addresses.
type journalNode struct {
	name, journal, ha, web string
}

func newJournalNode(t *testing.T, name string) *journalNode {
	return &journalNode{name: name, journal: testutil.FreeAddr(t, "127.0.0.1"), ha: testutil.FreeAddr(t, "127.0.0.1"), web: testutil.FreeAddr(t, "127.0.0.1")}
}

func (n *journalNode) config(peer *journalNode) string {
	conn, fwd := "", ""
	if peer != nil {
		conn = fmt.Sprintf("connections:\n  - {name: to-%s, address: %s, probe_interval: 200ms, retry_min: 100ms, retry_max: 1s}\n", peer.name, peer.ha)
		fwd = ", forward:to-" + peer.name
	}
	return fmt.Sprintf(`node: %s
data_dir: {{dir}}/data
listeners:
  - name: journal
    address: %s
    subaddress: {mailbox: archive@archive.example, delimiter: "+"}
  - {name: ha, address: %s, role: ha, allow: [127.0.0.0/8]}
%sroutes:
  - {name: journal, from: [journal], actions: [archive%s]}
  - {name: ha-in, from: [ha], actions: [archive]}
web: {address: %s, api_tokens: [%s], read_only_tokens: [%s]}
log: {level: debug, format: json}
`, n.name, n.journal, n.ha, conn, fwd, n.web, testutil.Token, roToken)
}

// apiGet runs a GET with a token and returns status, headers and body.
func apiGet(t *testing.T, n *testutil.Node, token, path string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", n.API+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// journalHit is a search hit with the journal fields.
type journalHit struct {
	ID, Subject string
	Reports     int
	Recipients  []struct{ Address, Kind string }
}

func searchAs(t *testing.T, n *testutil.Node, token string, q url.Values) []journalHit {
	t.Helper()
	q.Set("limit", "1000")
	status, _, body := apiGet(t, n, token, "/api/v1/archive/messages?"+q.Encode())
	if status != 200 {
		t.Fatalf("search %v: %d %s", q, status, body)
	}
	var p struct{ Messages []journalHit }
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatal(err)
	}
	return p.Messages
}

func corpusFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "journal", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestJournalReportsThroughAChain sends Exchange journal reports to a
// two-node chain, one report of a split delivery to each node, and checks
// on both nodes what an auditor and a read-only user get: the original
// found by its Bcc recipient and list members, shown once with every
// report as evidence, downloaded alone by default, the report only for the
// admin. A sub-addressed copy is found by the recipient it encodes.
func TestJournalReportsThroughAChain(t *testing.T) {
	t.Parallel()
	a, b := newJournalNode(t, "a"), newJournalNode(t, "b")
	na := testutil.StartNode(t, a.config(b))
	nb := testutil.StartNode(t, b.config(a))

	basic := corpusFile(t, "basic.eml")
	split := bytes.Replace(bytes.Replace(basic, []byte("<jr-0001@ex01.contoso.example>"), []byte("<jr-0001@ex02.contoso.example>"), 1),
		[]byte("Recipient: erin@contoso.example\r\n"), []byte("Bcc: zed@contoso.example, Expanded: legal@contoso.example\r\n"), 1)
	var sent [][]byte
	send := func(addr string, to []string, msg []byte) {
		t.Helper()
		if r, err := testutil.Send(addr, "postmaster@contoso.example", to, msg); err != nil || r.Code != 250 {
			t.Fatalf("send: %v %v", r, err)
		}
		sent = append(sent, msg)
	}
	send(a.journal, []string{"journal@archive.example"}, basic)
	send(b.journal, []string{"journal@archive.example"}, split)
	for _, f := range []string{"expanded-forwarded.eml", "original-base64.eml", "nested.eml", "exo-binary.eml", "decrypted.eml", "tnef-attachment.eml"} {
		send(a.journal, []string{"journal@archive.example"}, corpusFile(t, f))
	}
	plain := []byte("From: alice@contoso.example\r\nTo: bob@contoso.example\r\nSubject: via postfix recipe\r\nMessage-ID: <sub-1@contoso.example>\r\n\r\nhello\r\n")
	send(a.journal, []string{"archive+bob=contoso.example@archive.example", "archive+dave=contoso.example@archive.example"}, plain)

	want := testutil.DigestOf(sent)
	for _, n := range []*testutil.Node{na, nb} {
		testutil.WaitFor(t, 20*time.Second, "the chain to converge", func() bool { return n.Digest() == want })
	}

	rep, _ := journal.Parse(basic)
	orig, _ := rep.OriginalBytes(basic)
	for _, n := range []*testutil.Node{na, nb} {
		// One hit for the original, whichever report came first here.
		hits := searchAs(t, n, testutil.Token, url.Values{"to": {"dave@contoso.example"}, "message_id": {"orig-0001@contoso.example"}})
		if len(hits) != 1 || hits[0].Subject != "Quarterly numbers" || hits[0].Reports != 2 {
			t.Fatalf("%s: by Bcc recipient: %+v", n.API, hits)
		}
		head := hits[0].ID
		for _, to := range []string{"zed@contoso.example", "legal@contoso.example", "ivan@contoso.example", "audit@contoso.example"} {
			if hits := searchAs(t, n, testutil.Token, url.Values{"to": {to}}); len(hits) != 1 || (to == "zed@contoso.example" && hits[0].ID != head) {
				t.Errorf("%s: to=%s: %+v", n.API, to, hits)
			}
			if hits := searchAs(t, n, roToken, url.Values{"to": {to}}); len(hits) != 0 {
				t.Errorf("%s: read-only to=%s finds %+v", n.API, to, hits)
			}
		}
		// The metadata lists both reports; each is downloadable whole by
		// the admin only.
		status, _, body := apiGet(t, n, testutil.Token, "/api/v1/archive/messages/"+head)
		var m struct {
			Journal struct{ Reports []struct{ ID string } }
		}
		json.Unmarshal(body, &m)
		if status != 200 || len(m.Journal.Reports) != 2 {
			t.Fatalf("%s: metadata: %d %s", n.API, status, body)
		}
		ids := []string{m.Journal.Reports[0].ID, m.Journal.Reports[1].ID}
		if !slices.Contains(ids, testutil.HashOf(basic)) || !slices.Contains(ids, testutil.HashOf(split)) {
			t.Errorf("reports listed %v", ids)
		}
		for _, tc := range []struct {
			token, query string
			status       int
			part         string
			body         []byte
		}{
			{roToken, "", 200, "original", orig},
			{testutil.Token, "", 200, "original", orig},
			{roToken, "?part=report", 403, "", nil},
			{testutil.Token, "?part=report", 200, "report", basic},
		} {
			status, h, body := apiGet(t, n, tc.token, "/api/v1/archive/messages/"+testutil.HashOf(basic)+"/raw"+tc.query)
			if status != tc.status || (tc.body != nil && (!bytes.Equal(body, tc.body) || h.Get("X-Chainmail-Part") != tc.part)) {
				t.Errorf("%s: raw%s as %s: %d %s %q", n.API, tc.query, tc.token[:4], status, h.Get("X-Chainmail-Part"), body)
			}
		}
		_, _, body = apiGet(t, n, roToken, "/api/v1/archive/messages/"+head)
		if bytes.Contains(body, []byte("dave@")) || bytes.Contains(body, []byte("zed@")) {
			t.Errorf("%s: read-only metadata shows a Bcc recipient: %s", n.API, body)
		}
	}

	// The sub-addressed copy: decoded at receipt on a, so its envelope
	// (replicated to b) names the recipients, the encoded ones kept on a.
	for _, n := range []*testutil.Node{na, nb} {
		hits := searchAs(t, n, testutil.Token, url.Values{"to": {"dave@contoso.example"}, "subject": {"postfix recipe"}})
		if len(hits) != 1 || hits[0].ID != testutil.HashOf(plain) {
			t.Fatalf("%s: sub-addressed copy by its decoded recipient: %+v", n.API, hits)
		}
		if hits := searchAs(t, n, roToken, url.Values{"to": {"dave@contoso.example"}, "subject": {"postfix recipe"}}); len(hits) != 0 {
			t.Errorf("%s: read-only finds the Bcc recipient dave: %+v", n.API, hits)
		}
	}
	_, _, body := apiGet(t, na, testutil.Token, "/api/v1/archive/messages/"+testutil.HashOf(plain))
	var m struct {
		Envelope struct {
			RcptTo []string `json:"rcpt_to"`
		}
		EncodedRcptTo []string `json:"encoded_rcpt_to"`
	}
	json.Unmarshal(body, &m)
	if !slices.Equal(m.Envelope.RcptTo, []string{"bob@contoso.example", "dave@contoso.example"}) ||
		!slices.Equal(m.EncodedRcptTo, []string{"archive+bob=contoso.example@archive.example", "archive+dave=contoso.example@archive.example"}) {
		t.Errorf("envelope of the sub-addressed copy: %s", body)
	}
	if strings.Contains(string(plain), "dave") {
		t.Fatal("the test message must not name its Bcc recipient")
	}
}
