// Package e2e holds chainmail's end-to-end tests: the real binary as a
// process, real SMTP clients (swaks, Python's smtplib, Postfix's
// smtp-source, raw sockets), bbolt on disk. Only test files live here.
package e2e
