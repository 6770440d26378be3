package archive

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// Grouping the reports of one original.
//
// One journaled message can reach the archive in several reports: Exchange
// splits a message with many recipients over several reports (one per
// database or forest in a hybrid set-up), and every journal rule that
// matches sends its own. Their bytes differ, so each is its own record with
// its own id (the digest counts them all), but they carry the same
// original. An auditor wants that original once in search results, with
// every recipient of every report, and every report at hand as evidence.
//
// The original's identity is the SHA-256 of its bytes (JournalPart.SHA256).
// Bucket "original" maps it to the record of the first report of it, the
// group's record: later reports are stored as usual, marked GroupedInto
// that record, and not indexed; their recipients are merged into the
// group's record and indexed under it, and they are listed in its Reports.
// Search skips grouped records. Which report came first may differ from
// node to node, so the group's record may differ too; the set of records,
// and so the digest, does not.

var bucketOriginal = []byte("original")

// groupTx runs inside PutTx for a new record m, before m is written. It
// returns true when m joined an existing group: the caller must then not
// index it. It changes nothing outside tx and m.
func groupTx(top *bolt.Bucket, m *Meta) (bool, error) {
	j := m.Journal
	if j == nil || j.Original == nil || j.Original.SHA256 == "" {
		return false, nil
	}
	key, err := hex.DecodeString(j.Original.SHA256)
	if err != nil || len(key) != 32 {
		return false, nil
	}
	origs := top.Bucket(bucketOriginal)
	ref := ReportRef{ID: m.ID, Received: m.Receipt.Received, Node: m.Receipt.Node, Recipients: len(j.Recipients)}
	v := origs.Get(key)
	if v == nil {
		j.Reports = []ReportRef{ref}
		return false, origs.Put(key, u64(m.Seq))
	}
	headSeq := binary.BigEndian.Uint64(v)
	metas := top.Bucket(bucketMeta)
	head, err := getMeta(metas, headSeq)
	if err != nil {
		return false, fmt.Errorf("group into %d: %w", headSeq, err)
	}
	if head.Journal == nil {
		return false, fmt.Errorf("group into %d: the record is not a journal report", headSeq)
	}
	j.GroupedInto, j.Reports = head.ID, nil
	added := mergeRecipients(head.Journal, j.Recipients)
	if len(head.Journal.Reports) < maxReportRefs {
		head.Journal.Reports = append(head.Journal.Reports, ref)
	}
	if err := putMeta(metas, head); err != nil {
		return false, err
	}
	idx := top.Bucket(bucketIndex)
	for _, r := range added {
		for _, a := range []string{r.Address, r.ExpandedFrom, r.ForwardedFrom} {
			if err := postAddress(idx, kindRcpt, a, headSeq); err != nil {
				return false, err
			}
		}
	}
	return true, nil
}

// mergeRecipients adds to j the recipients of add it does not list yet
// (same address, kind, list and forwarding, case-insensitive), up to
// maxJournalRecipients, and returns those it added.
func mergeRecipients(j *JournalSummary, add []Recipient) []Recipient {
	key := func(r Recipient) string {
		return strings.ToLower(r.Address + "\x00" + r.Kind + "\x00" + r.ExpandedFrom + "\x00" + r.ForwardedFrom)
	}
	seen := make(map[string]bool, len(j.Recipients))
	for _, r := range j.Recipients {
		seen[key(r)] = true
	}
	var added []Recipient
	for _, r := range add {
		if len(j.Recipients) >= maxJournalRecipients {
			break
		}
		if k := key(r); !seen[k] {
			seen[k] = true
			j.Recipients = append(j.Recipients, r)
			added = append(added, r)
		}
	}
	return added
}
