// Command balancerload is the SMTP load client of bench/balancer.sh: a fixed
// number of concurrent clients run whole SMTP sessions (greeting, EHLO, N
// mail transactions, QUIT) against one or more addresses for a fixed time,
// and it reports sessions/s, messages/s and latency percentiles — what
// smtp-source cannot report. It speaks without pipelining, one command and
// its reply at a time, so every latency is a round trip through the proxy.
//
// Output: one line of key=value pairs (see report) for the script to parse.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	addrs := flag.String("addrs", "", "comma-separated host:port list; clients take them in turn")
	conc := flag.Int("c", 32, "concurrent sessions")
	msgs := flag.Int("m", 1, "messages per session")
	size := flag.Int("size", 1024, "message body size in bytes")
	dur := flag.Duration("d", 10*time.Second, "measuring time (after warm-up)")
	warm := flag.Duration("warmup", time.Second, "warm-up time, not measured")
	maxSessions := flag.Int64("max", 10_000_000, "stop after this many sessions in all")
	pids := flag.String("pids", "", "comma-separated PIDs whose CPU time (user+system) is measured over the measuring time")
	flag.Parse()
	list := strings.Split(*addrs, ",")
	if *addrs == "" || *conc < 1 || *msgs < 1 {
		flag.Usage()
		os.Exit(2)
	}
	r := run(list, *conc, *msgs, body(*size), *warm, *dur, *maxSessions, *pids)
	fmt.Println(r)
	if r.errors > 0 {
		fmt.Fprintf(os.Stderr, "balancerload: %d failed sessions; first: %v\n", r.errors, r.firstErr)
	}
}

// body is a message of about n bytes, CRLF lines, ending in the DATA dot.
func body(n int) []byte {
	var b strings.Builder
	b.WriteString("From: bench@example.org\r\nTo: archive@example.org\r\nSubject: balancer bench\r\n\r\n")
	line := strings.Repeat("x", 76) + "\r\n"
	for b.Len() < n {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return []byte(b.String())
}

type result struct {
	cpu               time.Duration // of -pids, over the measuring time
	elapsed           time.Duration
	sessions, mails   int64
	errors            int64
	firstErr          error
	session, greeting []time.Duration // per measured session
	mail              []time.Duration // per measured message: MAIL to the 250 after DATA
}

func pct(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(float64(len(d)-1) * p)
	return float64(d[i].Microseconds()) / 1000
}

func (r result) String() string {
	s := r.elapsed.Seconds()
	cpu := 0.0
	if r.sessions > 0 {
		cpu = float64(r.cpu.Microseconds()) / float64(r.sessions)
	}
	return fmt.Sprintf("sessions_per_s=%.0f messages_per_s=%.0f sessions=%d errors=%d "+
		"session_p50_ms=%.3f session_p99_ms=%.3f greeting_p50_ms=%.3f greeting_p99_ms=%.3f mail_p50_ms=%.3f mail_p99_ms=%.3f cpu_us_per_session=%.1f",
		float64(r.sessions)/s, float64(r.mails)/s, r.sessions, r.errors,
		pct(r.session, .5), pct(r.session, .99), pct(r.greeting, .5), pct(r.greeting, .99), pct(r.mail, .5), pct(r.mail, .99), cpu)
}

// cpuTime is the user+system time of the processes, from /proc (in
// USER_HZ ticks, 100 per second on Linux).
func cpuTime(pids string) time.Duration {
	var ticks int64
	for _, pid := range strings.Split(pids, ",") {
		if pid == "" {
			continue
		}
		b, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			continue
		}
		// Fields after the ")" that ends the command name: state is 3rd,
		// utime 14th and stime 15th of the whole line.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 12 {
			var u, s int64
			fmt.Sscan(f[11], &u)
			fmt.Sscan(f[12], &s)
			ticks += u + s
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func run(addrs []string, conc, msgs int, msg []byte, warm, dur time.Duration, maxSessions int64, pids string) result {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		total     atomic.Int64
		mu        sync.Mutex
		res       result
		wg        sync.WaitGroup
	)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sess, greet, mail []time.Duration
			var n, m, errs int64
			var first error
			for i := w; !stop.Load() && total.Add(1) <= maxSessions; i++ {
				on := measuring.Load()
				st, err := oneSession(addrs[i%len(addrs)], msgs, msg)
				if !on || !measuring.Load() {
					continue
				}
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
					continue
				}
				n++
				m += int64(msgs)
				sess = append(sess, st.session)
				greet = append(greet, st.greeting)
				mail = append(mail, st.mails...)
			}
			mu.Lock()
			res.sessions += n
			res.mails += m
			res.errors += errs
			if res.firstErr == nil {
				res.firstErr = first
			}
			res.session = append(res.session, sess...)
			res.greeting = append(res.greeting, greet...)
			res.mail = append(res.mail, mail...)
			mu.Unlock()
		}()
	}
	time.Sleep(warm)
	cpu0 := cpuTime(pids)
	measuring.Store(true)
	start := time.Now()
	time.Sleep(dur)
	measuring.Store(false)
	res.elapsed = time.Since(start)
	res.cpu = cpuTime(pids) - cpu0
	stop.Store(true)
	wg.Wait()
	return res
}

type timings struct {
	session, greeting time.Duration
	mails             []time.Duration
}

var errReply = errors.New("unexpected reply")

func oneSession(addr string, msgs int, msg []byte) (timings, error) {
	var t timings
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return t, err
	}
	defer c.Close()
	c.SetDeadline(start.Add(60 * time.Second))
	br := bufio.NewReaderSize(c, 4096)
	if err := expect(br, '2'); err != nil {
		return t, fmt.Errorf("greeting: %w", err)
	}
	t.greeting = time.Since(start)
	if err := cmd(c, br, "EHLO bench.example.org\r\n", '2'); err != nil {
		return t, fmt.Errorf("EHLO: %w", err)
	}
	for range msgs {
		ms := time.Now()
		for _, step := range []struct {
			line string
			want byte
		}{{"MAIL FROM:<bench@example.org>\r\n", '2'}, {"RCPT TO:<archive@example.org>\r\n", '2'}, {"DATA\r\n", '3'}} {
			if err := cmd(c, br, step.line, step.want); err != nil {
				return t, fmt.Errorf("%s: %w", strings.TrimSpace(step.line), err)
			}
		}
		if _, err := c.Write(msg); err != nil {
			return t, err
		}
		if err := expect(br, '2'); err != nil {
			return t, fmt.Errorf("end of DATA: %w", err)
		}
		t.mails = append(t.mails, time.Since(ms))
	}
	if err := cmd(c, br, "QUIT\r\n", '2'); err != nil {
		return t, fmt.Errorf("QUIT: %w", err)
	}
	t.session = time.Since(start)
	return t, nil
}

func cmd(c net.Conn, br *bufio.Reader, line string, want byte) error {
	if _, err := c.Write([]byte(line)); err != nil {
		return err
	}
	return expect(br, want)
}

// expect reads one (possibly multi-line) reply and checks its first digit.
func expect(br *bufio.Reader, want byte) error {
	for {
		l, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(l) < 4 || l[0] != want {
			return fmt.Errorf("%w: %q", errReply, l)
		}
		if l[3] != '-' {
			return nil
		}
	}
}
