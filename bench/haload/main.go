// Command haload is the rate-limited SMTP client of bench/ha.sh, and the
// tool that turns its record and a peer's log into replication lag.
//
//	haload send -addr A -rate R -d 30s -c 16 -out sent.tsv
//	haload lag  -sent sent.tsv -log b.log
//
// send offers messages at a fixed rate (an open schedule: message i is due
// at start + i/R, whatever the replies before it took) over -c sessions
// that each send many messages without pipelining. Every message is
// distinct (a run id and a counter in its Message-ID, Subject and body),
// because the archive deduplicates identical bytes. For each accepted
// message it writes one line: the hash from the node's 250 text, the time
// the 354 reply to DATA arrived (the node's receipt starts there: its
// "received" is taken when DATA begins) and the time of the 250, both in
// Unix nanoseconds.
//
// lag joins that record with the peer's JSON log, whose "message accepted"
// lines carry the short hash (msg) and the time the peer answered 250, just
// after its commit, and prints percentiles of peer 250 − origin receipt,
// what chainmail_replication_lag_seconds measures, per message. Both
// processes run on one machine, so they read one clock.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: haload send|lag [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "send":
		err = sendCmd(os.Args[2:])
	case "lag":
		err = lagCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "haload:", err)
		os.Exit(1)
	}
}

// --- send ---------------------------------------------------------------

type record struct {
	hash           string
	data, accepted int64 // Unix ns: 354 received, 250 received
}

func sendCmd(args []string) error {
	fs := flag.NewFlagSet("send", flag.ExitOnError)
	addr := fs.String("addr", "", "host:port of the node's journal listener")
	rate := fs.Float64("rate", 100, "messages per second offered")
	dur := fs.Duration("d", 30*time.Second, "how long to offer messages")
	conc := fs.Int("c", 16, "concurrent sessions")
	size := fs.Int("size", 10240, "message size in bytes (about)")
	out := fs.String("out", "", "file for one line per accepted message: hash, 354 time, 250 time (Unix ns)")
	fs.Parse(args)
	if *addr == "" || *rate <= 0 || *conc < 1 || *out == "" {
		fs.Usage()
		return errors.New("-addr, -rate > 0, -c >= 1 and -out are required")
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	defer f.Close()

	total := int(*rate * dur.Seconds())
	run := strconv.FormatUint(rand.Uint64(), 36)
	jobs := make(chan int, total)
	var (
		mu      sync.Mutex
		recs    = make([]record, 0, total)
		errs    atomic.Int64
		firstMu sync.Mutex
		first   error
		maxLate atomic.Int64 // how far behind its schedule a message started, worst case
		wg      sync.WaitGroup
	)
	fail := func(err error) {
		errs.Add(1)
		firstMu.Lock()
		if first == nil {
			first = err
		}
		firstMu.Unlock()
	}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / *rate)
	for range *conc {
		wg.Go(func() {
			var s *client
			defer func() {
				if s != nil {
					s.quit()
				}
			}()
			for i := range jobs {
				late := int64(time.Since(start.Add(time.Duration(i) * interval)))
				for cur := maxLate.Load(); late > cur && !maxLate.CompareAndSwap(cur, late); cur = maxLate.Load() {
				}
				if s == nil {
					var err error
					if s, err = dial(*addr); err != nil {
						fail(err)
						continue
					}
				}
				r, err := s.send(message(run, i, *size))
				if err != nil {
					fail(err)
					s.c.Close()
					s = nil
					continue
				}
				mu.Lock()
				recs = append(recs, r)
				mu.Unlock()
			}
		})
	}
	// The schedule: message i is handed out at start + i*interval. A
	// session busy past its turn delays only that message; the others keep
	// the pace (jobs has room for every message).
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)

	w := bufio.NewWriter(f)
	var accept []time.Duration
	for _, r := range recs {
		fmt.Fprintf(w, "%s %d %d\n", r.hash, r.data, r.accepted)
		accept = append(accept, time.Duration(r.accepted-r.data))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Printf("offered=%d accepted=%d errors=%d elapsed_s=%.2f rate=%.1f max_late_ms=%.1f data_to_250_p50_ms=%.2f data_to_250_p99_ms=%.2f\n",
		total, len(recs), errs.Load(), elapsed.Seconds(), float64(len(recs))/elapsed.Seconds(),
		float64(maxLate.Load())/1e6, ms(pct(accept, .50)), ms(pct(accept, .99)))
	if first != nil {
		fmt.Fprintf(os.Stderr, "haload: %d errors; first: %v\n", errs.Load(), first)
	}
	return nil
}

// message is the i-th message of a run: about size bytes, CRLF lines, no
// line starting with a dot, ending in the DATA terminator.
func message(run string, i, size int) []byte {
	var b strings.Builder
	b.Grow(size + 128)
	fmt.Fprintf(&b, "From: haload@example.org\r\nTo: archive@example.org\r\nSubject: haload %s %d\r\n"+
		"Message-ID: <%s.%d@haload.example.org>\r\nDate: %s\r\n\r\n",
		run, i, run, i, time.Now().UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "message %d of run %s\r\n", i, run)
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return []byte(b.String())
}

type client struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(addr string) (*client, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	s := &client{c: c, br: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := s.reply('2'); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if _, err := s.cmd("EHLO haload.example.org\r\n", '2'); err != nil {
		c.Close()
		return nil, fmt.Errorf("EHLO: %w", err)
	}
	return s, nil
}

func (s *client) quit() {
	s.c.SetDeadline(time.Now().Add(5 * time.Second))
	s.cmd("QUIT\r\n", '2')
	s.c.Close()
}

func (s *client) send(msg []byte) (record, error) {
	var r record
	s.c.SetDeadline(time.Now().Add(60 * time.Second))
	for _, step := range []string{"MAIL FROM:<haload@example.org>\r\n", "RCPT TO:<archive@example.org>\r\n"} {
		if _, err := s.cmd(step, '2'); err != nil {
			return r, fmt.Errorf("%s: %w", strings.TrimSpace(step), err)
		}
	}
	if _, err := s.cmd("DATA\r\n", '3'); err != nil {
		return r, fmt.Errorf("DATA: %w", err)
	}
	r.data = time.Now().UnixNano()
	if _, err := s.c.Write(msg); err != nil {
		return r, err
	}
	text, err := s.reply('2')
	if err != nil {
		return r, fmt.Errorf("end of DATA: %w", err)
	}
	r.accepted = time.Now().UnixNano()
	// "250 2.0.0 OK: archived as <sha256 hex>"
	f := strings.Fields(text)
	if len(f) == 0 || len(f[len(f)-1]) != 64 {
		return r, fmt.Errorf("no hash in the reply %q", text)
	}
	r.hash = f[len(f)-1]
	return r, nil
}

func (s *client) cmd(line string, want byte) (string, error) {
	if _, err := s.c.Write([]byte(line)); err != nil {
		return "", err
	}
	return s.reply(want)
}

var errReply = errors.New("unexpected reply")

// reply reads one reply, possibly multi-line, and checks its first digit.
func (s *client) reply(want byte) (string, error) {
	var text strings.Builder
	for {
		l, err := s.br.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(l) < 4 || l[0] != want {
			return "", fmt.Errorf("%w: %q", errReply, strings.TrimSpace(l))
		}
		text.WriteString(strings.TrimSpace(l[4:]))
		if l[3] != '-' {
			return text.String(), nil
		}
		text.WriteByte('\n')
	}
}

// --- lag ----------------------------------------------------------------

func lagCmd(args []string) error {
	fs := flag.NewFlagSet("lag", flag.ExitOnError)
	sent := fs.String("sent", "", "the record of haload send")
	logf := fs.String("log", "", "the peer's JSON log (log: {level: info, format: json})")
	fs.Parse(args)
	if *sent == "" || *logf == "" {
		fs.Usage()
		return errors.New("-sent and -log are required")
	}
	// The peer's 250 for each message, by short hash (the first 12 hex
	// digits, as the log names messages). The first acceptance counts.
	peer := map[string]int64{}
	lf, err := os.Open(*logf)
	if err != nil {
		return err
	}
	defer lf.Close()
	sc := bufio.NewScanner(lf)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), `"message accepted"`) {
			continue
		}
		var l struct {
			Msg  string    `json:"msg"`
			Time time.Time `json:"time"`
		}
		if json.Unmarshal(line, &l) != nil || l.Msg == "" {
			continue
		}
		if _, seen := peer[l.Msg]; !seen {
			peer[l.Msg] = l.Time.UnixNano()
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	sf, err := os.Open(*sent)
	if err != nil {
		return err
	}
	defer sf.Close()
	var fromData, fromAck []time.Duration
	total, missing := 0, 0
	sc = bufio.NewScanner(sf)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || len(f[0]) < 12 {
			continue
		}
		total++
		data, _ := strconv.ParseInt(f[1], 10, 64)
		ack, _ := strconv.ParseInt(f[2], 10, 64)
		t, ok := peer[f[0][:12]]
		if !ok {
			missing++
			continue
		}
		fromData = append(fromData, time.Duration(t-data))
		fromAck = append(fromAck, time.Duration(t-ack))
	}
	if err := sc.Err(); err != nil {
		return err
	}
	fmt.Printf("messages=%d matched=%d missing=%d lag_p50_ms=%.2f lag_p90_ms=%.2f lag_p99_ms=%.2f lag_max_ms=%.2f after_ack_p50_ms=%.2f after_ack_p99_ms=%.2f\n",
		total, len(fromData), missing, ms(pct(fromData, .50)), ms(pct(fromData, .90)), ms(pct(fromData, .99)), ms(pct(fromData, 1)),
		ms(pct(fromAck, .50)), ms(pct(fromAck, .99)))
	if missing > 0 {
		return fmt.Errorf("%d of %d messages are not in the peer's log", missing, total)
	}
	return nil
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[int(float64(len(d)-1)*p+0.5)]
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
