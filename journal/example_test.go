package journal_test

import (
	"errors"
	"fmt"
	"os"

	"chainmail/journal"
)

// The archive calls Parse with each message's bytes as received. Ordinary
// mail is reported as ErrNotReport; for a report, every real recipient is
// indexed and the original is served as a slice of the stored bytes.
func ExampleParse() {
	msg, err := os.ReadFile("testdata/expanded-forwarded.eml")
	if err != nil {
		panic(err)
	}
	rep, err := journal.Parse(msg)
	if errors.Is(err, journal.ErrNotReport) {
		fmt.Println("ordinary message")
		return
	} else if err != nil {
		panic(err)
	}
	fmt.Println("sender:", rep.Sender, "message-id:", rep.MessageID)
	for _, r := range rep.Recipients {
		switch {
		case r.ExpandedFrom != "":
			fmt.Printf("%-9s %s (member of %s)\n", r.Kind, r.Address, r.ExpandedFrom)
		case r.ForwardedFrom != "":
			fmt.Printf("%-9s %s (forwarded from %s)\n", r.Kind, r.Address, r.ForwardedFrom)
		default:
			fmt.Printf("%-9s %s\n", r.Kind, r.Address)
		}
	}
	if rep.Original.Raw() {
		orig := msg[rep.Original.Offset : rep.Original.Offset+rep.Original.Length]
		fmt.Printf("original: bytes %d-%d of the report, starting %q\n",
			rep.Original.Offset, rep.Original.Offset+rep.Original.Length, orig[:9])
	}
	// Output:
	// sender: alice@contoso.example message-id: <orig-0003@contoso.example>
	// to        bob@contoso.example (member of sales@contoso.example)
	// to        gina@contoso.example (member of sales@contoso.example)
	// cc        henry.fwd@fabrikam.example (forwarded from henry@contoso.example)
	// bcc       ivan@contoso.example (member of audit@contoso.example)
	// recipient judy@contoso.example (forwarded from judith@contoso.example)
	// original: bytes 982-1428 of the report, starting "Received:"
}

func ExampleDecodeSubaddress() {
	addr, ok := journal.DecodeSubaddress("<archive+bob=contoso.example@archive.example>", "+")
	fmt.Println(addr, ok)
	// Output: bob@contoso.example true
}
