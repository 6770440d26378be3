// Package testutil holds helpers that several packages' tests share: the
// bbolt consistency check, the chainmail binary built once per test run, and
// a small fake SMTP peer for forwarder edge cases. Only tests import it.
package testutil
