package journal

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseEnvelopeLines(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		text  string
		want  Envelope // only the fields set here are compared, and Recipients
		warns []string
	}{
		{
			name: "spec order, CRLF",
			text: "Sender: a@x.example\r\nSubject: s\r\nMessage-ID: <m@x.example>\r\nTo: b@x.example\r\n",
			want: Envelope{Sender: "a@x.example", Subject: "s", MessageID: "<m@x.example>",
				Recipients: []Recipient{rc(KindTo, "b@x.example")}},
		},
		{
			name: "odd names and spacing",
			text: "  SENDER :a@x.example\nmessageid:<m@x.example>\non_behalf_of:   o@x.example  \nBCC:b@x.example,expanded:l@x.example\n",
			want: Envelope{Sender: "a@x.example", MessageID: "<m@x.example>", OnBehalfOf: "o@x.example",
				Recipients: []Recipient{rcExp(KindBcc, "b@x.example", "l@x.example")}},
		},
		{
			name: "null sender",
			text: "Sender: <>\nTo: b@x.example\n",
			want: Envelope{Recipients: []Recipient{rc(KindTo, "b@x.example")}},
		},
		{
			name: "both redirections on one line",
			text: "To: b@x.example, Expanded: l@x.example, Forwarded: f@x.example\n",
			want: Envelope{Recipients: []Recipient{{Address: "b@x.example", Kind: KindTo,
				ExpandedFrom: "l@x.example", ForwardedFrom: "f@x.example"}}},
		},
		{
			name: "quoted comma in a display name",
			text: `Cc: "Doe, Jane" <j@x.example>, Forwarded: "Doe, J" <jd@x.example>` + "\n",
			want: Envelope{Recipients: []Recipient{rcFwd(KindCc, "j@x.example", "jd@x.example")}},
		},
		{
			name:  "X.500 address passes through",
			text:  "To: /O=CONTOSO/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=BOB\n",
			want:  Envelope{Recipients: []Recipient{rc(KindTo, "/O=CONTOSO/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=BOB")}},
			warns: []string{"line 1: To: address"},
		},
		{
			name:  "duplicates: the first wins",
			text:  "Sender: a@x.example\nSender: z@x.example\nTo: b@x.example\n",
			want:  Envelope{Sender: "a@x.example", Recipients: []Recipient{rc(KindTo, "b@x.example")}},
			warns: []string{"journal: envelope part: line 2: second Sender field ignored (first on line 1)"},
		},
		{
			name: "problems name their line",
			text: "Sender: a@x.example\n\nTo:\nCc: , Expanded: l@x.example\nForwarded: f@x.example\nSentUtc: yesterday\n:x\n",
			want: Envelope{Sender: "a@x.example"},
			warns: []string{
				"journal: envelope part: line 3: To: empty address",
				"journal: envelope part: line 4: Cc: empty address",
				"journal: envelope part: line 4: Cc: Expanded before any address",
				"journal: envelope part: line 5: Forwarded: no recipient line before it",
				`journal: envelope part: line 6: SentUtc: unrecognised time "yesterday"`,
				`journal: envelope part: line 7: not a "Name: value" line: ":x"`,
			},
		},
		{
			name: "encoded-word subject",
			text: "Subject: =?utf-8?q?caf=C3=A9?= menu\nTo: b@x.example\n",
			want: Envelope{Subject: "café menu", Recipients: []Recipient{rc(KindTo, "b@x.example")}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warns := parseEnvelope(tc.text)
			if got.Sender != tc.want.Sender || got.Subject != tc.want.Subject || got.MessageID != tc.want.MessageID ||
				got.OnBehalfOf != tc.want.OnBehalfOf {
				t.Errorf("got %+v", got)
			}
			if !reflect.DeepEqual(got.Recipients, tc.want.Recipients) {
				t.Errorf("Recipients:\n got %+v\nwant %+v", got.Recipients, tc.want.Recipients)
			}
			checkWarnings(t, warns, tc.warns)
		})
	}
}

func TestEnvelopeKeepsUnknownFields(t *testing.T) {
	t.Parallel()
	env, _ := parseEnvelope("Sender: a@x.example\nX-Tenant: contoso\n folded\nTo: b@x.example\n")
	want := []Field{
		{Name: "Sender", Value: "a@x.example", Line: 1},
		{Name: "X-Tenant", Value: "contoso folded", Line: 2},
		{Name: "To", Value: "b@x.example", Line: 4},
	}
	if !reflect.DeepEqual(env.Fields, want) {
		t.Errorf("Fields = %+v", env.Fields)
	}
}

func TestEnvelopeManyFoldedLines(t *testing.T) {
	t.Parallel()
	// Unfolding must stay linear: this is one field of 200,000 folded
	// lines, which took minutes when each line was appended to a string.
	text := "To: b@x.example" + strings.Repeat("\n , c@x.example", 200000) + "\n"
	env, warns := parseEnvelope(text)
	if len(env.Recipients) != 200001 || len(warns) != 0 {
		t.Errorf("%d recipients, %d warnings", len(env.Recipients), len(warns))
	}
}

func TestParseTime(t *testing.T) {
	t.Parallel()
	want := time.Date(2025, 3, 3, 14, 5, 9, 0, time.UTC)
	for _, s := range []string{
		"2025-03-03T14:05:09Z",
		"2025-03-03T14:05:09.0000000Z",
		"2025-03-03T14:05:09.0000000",
		"2025-03-03T15:05:09+01:00",
		"2025-03-03 14:05:09Z",
		"2025-03-03 14:05:09",
		"3/3/2025 2:05:09 PM",
		"3/3/2025 14:05:09",
		"Mon, 3 Mar 2025 14:05:09 +0000",
		"Mon, 03 Mar 2025 14:05:09 GMT",
		"2025-03-03T14:05:09Z (UTC)",
	} {
		got, ok := parseTime(s)
		if !ok || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("parseTime(%q) = %v, %v", s, got, ok)
		}
	}
	if _, ok := parseTime("soon"); ok {
		t.Error(`parseTime("soon") succeeded`)
	}
}

func TestToUTF8(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, charset, want string
		ok                bool
	}{
		{"caf\xe9", "ISO-8859-1", "café", true},
		{"\x93quoted\x94 \x80", "windows-1252", "“quoted” €", true},
		{"café", "utf-8", "café", true},
		{"bad \xff", "", "bad \uFFFD", true},
		{"x", "koi8-r", "x", false},
	} {
		got, ok := toUTF8([]byte(tc.in), tc.charset)
		if got != tc.want || ok != tc.ok {
			t.Errorf("toUTF8(%q, %q) = %q, %v", tc.in, tc.charset, got, ok)
		}
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	s := strings.Repeat("é", 100)
	c := clip(s)
	if !strings.HasSuffix(c, "...") || len(c) > 83 || !strings.HasPrefix(s, strings.TrimSuffix(c, "...")) {
		t.Errorf("clip = %q", c)
	}
}
