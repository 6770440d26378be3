package web

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chainmail/forwarder"
	"chainmail/internal/ui"
)

// The dashboard's traffic chart comes from a ring of samples of the
// node's own counters (chainmail_smtp_sessions_total and the accepted
// results of chainmail_smtp_messages_total, summed over listeners), taken
// every sampleEvery by a goroutine that Serve owns. Reading the registry
// keeps the console independent of how the listeners count. The chart
// shows, for each of the last 30 minutes, how many sessions and messages
// the minute ending there saw; the last point is the minute ending now.
const (
	sampleEvery = 10 * time.Second
	chartWindow = 30 * time.Minute
	// ringSize covers the window and one minute before it.
	ringSize = int((chartWindow+time.Minute)/sampleEvery) + 1
)

// Names of the counters the sampler reads (docs/metrics.md).
const (
	metricSessions = "chainmail_smtp_sessions_total"
	metricMessages = "chainmail_smtp_messages_total"
)

type sample struct {
	at                 time.Time
	sessions, messages float64
}

// rateSampler keeps the samples, and each connection's highest backlog
// since it was last empty (the base of its catch-up progress).
type rateSampler struct {
	reg prometheus.Gatherer
	now func() time.Time

	mu    sync.Mutex
	ring  []sample // oldest first, at most ringSize
	peaks map[string]int64
}

func newRateSampler(reg prometheus.Gatherer, now func() time.Time) *rateSampler {
	return &rateSampler{reg: reg, now: now, peaks: map[string]int64{}}
}

// run samples until ctx ends.
func (r *rateSampler) run(ctx context.Context, every time.Duration) {
	r.sample()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.sample()
		}
	}
}

// startSampler runs the sampler until ctx ends; the returned function
// waits for it to stop.
func (c *console) startSampler(ctx context.Context) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.rates.run(ctx, sampleEvery)
	}()
	return func() { <-done }
}

// read takes the counters' values now.
func (r *rateSampler) read() sample {
	s := sample{at: r.now()}
	if r.reg == nil {
		return s
	}
	fams, _ := r.reg.Gather() // a partial answer still has our counters
	for _, f := range fams {
		switch f.GetName() {
		case metricSessions:
			for _, m := range f.GetMetric() {
				s.sessions += m.GetCounter().GetValue()
			}
		case metricMessages:
			for _, m := range f.GetMetric() {
				if labelOf(m.GetLabel(), "result") != "rejected" {
					s.messages += m.GetCounter().GetValue()
				}
			}
		}
	}
	return s
}

func (r *rateSampler) sample() {
	s := r.read()
	r.mu.Lock()
	r.ring = append(r.ring, s)
	if len(r.ring) > ringSize {
		r.ring = append(r.ring[:0:0], r.ring[len(r.ring)-ringSize:]...)
	}
	r.mu.Unlock()
}

func labelOf[L interface {
	GetName() string
	GetValue() string
}](labels []L, name string) string {
	for _, l := range labels {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// minutePoint counts what the minute ending At saw.
type minutePoint struct {
	At                 time.Time
	Sessions, Messages float64
}

// minutes returns one point per minute of the window that has samples,
// oldest first; the last ends at cur, the counters read now.
func (r *rateSampler) minutes(cur sample) []minutePoint {
	r.mu.Lock()
	ring := append(append([]sample(nil), r.ring...), cur)
	r.mu.Unlock()
	// at is the last sample taken at or before t (the first one for an
	// earlier t: counters start at zero with the node).
	at := func(t time.Time) sample {
		best := sample{at: ring[0].at}
		for _, s := range ring {
			if s.at.After(t) {
				break
			}
			best = s
		}
		return best
	}
	var out []minutePoint
	for m := int(chartWindow/time.Minute) - 1; m >= 0; m-- {
		end := cur.at.Add(-time.Duration(m) * time.Minute)
		if !end.After(ring[0].at) {
			continue
		}
		a, b := at(end.Add(-time.Minute)), at(end)
		out = append(out, minutePoint{At: end,
			Sessions: math.Max(0, b.sessions-a.sessions),
			Messages: math.Max(0, b.messages-a.messages)})
	}
	return out
}

// progress is a connection's catch-up progress in [0,1]: how much of the
// highest backlog since the queue was last empty has been delivered; ok is
// false when there is nothing to catch up.
func (r *rateSampler) progress(name string, depth int64) (float64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if depth <= 0 {
		delete(r.peaks, name)
		return 1, false
	}
	peak := max(r.peaks[name], depth)
	r.peaks[name] = peak
	return float64(peak-depth) / float64(peak), true
}

// chart is the inline SVG of the dashboard: coordinates are computed here
// and the template only draws them (no inline style: the CSP forbids it).
type chart struct {
	W, H                     int
	Left, Right, Top, Bottom int
	Messages, Sessions       string // polyline points
	Dots                     []dot
	YTicks                   []tick
	XTicks                   []tick
	Summary                  string // the chart's text alternative
}

type tick struct {
	X, Y  float64
	Label string
}

type dot struct {
	X, Y   float64
	Series string // s-messages, s-sessions
}

// The chart comes in two shapes: wide for a desktop's card, and taller
// and narrower for a phone, where a wide one would be too flat to read;
// the stylesheet shows one.
var (
	wideChart   = chart{W: 640, H: 190, Left: 44, Right: 630, Top: 12, Bottom: 166}
	narrowChart = chart{W: 360, H: 230, Left: 34, Right: 350, Top: 12, Bottom: 204}
)

func makeChart(shape chart, pts []minutePoint, now time.Time) chart {
	c := shape
	top := 0.0
	for _, p := range pts {
		top = math.Max(top, math.Max(p.Messages, p.Sessions))
	}
	// Four whole steps, each 1, 2 or 5 times a power of ten.
	step := niceCeil(top / 4)
	top = 4 * step
	from := now.Add(-chartWindow)
	x := func(t time.Time) float64 {
		f := float64(t.Sub(from)) / float64(chartWindow)
		return float64(c.Left) + math.Max(0, math.Min(1, f))*float64(c.Right-c.Left)
	}
	y := func(v float64) float64 {
		return float64(c.Bottom) - v/top*float64(c.Bottom-c.Top)
	}
	var ms, ss []string
	for _, p := range pts {
		ms = append(ms, fmt.Sprintf("%.1f,%.1f", x(p.At), y(p.Messages)))
		ss = append(ss, fmt.Sprintf("%.1f,%.1f", x(p.At), y(p.Sessions)))
	}
	if len(pts) <= 2 {
		// Too few points for a line to show: mark them.
		for _, p := range pts {
			c.Dots = append(c.Dots, dot{x(p.At), y(p.Sessions), "s-sessions"}, dot{x(p.At), y(p.Messages), "s-messages"})
		}
	}
	c.Messages, c.Sessions = strings.Join(ms, " "), strings.Join(ss, " ")
	for i := 0; i <= 4; i++ {
		v := step * float64(i)
		c.YTicks = append(c.YTicks, tick{X: float64(c.Left - 6), Y: y(v), Label: trimFloat(v)})
	}
	marks := []int{30, 20, 10, 0}
	if c.W < 500 {
		marks = []int{30, 15, 0}
	}
	for _, m := range marks {
		label := fmt.Sprintf("−%d min", m)
		if m == 0 {
			label = "now"
		}
		c.XTicks = append(c.XTicks, tick{X: x(now.Add(-time.Duration(m) * time.Minute)), Y: float64(c.Bottom + 16), Label: label})
	}
	if n := len(pts); n == 0 {
		c.Summary = "No traffic samples yet."
	} else {
		last := pts[n-1]
		c.Summary = fmt.Sprintf("In the last minute: %s, %s.", count(last.Messages, "message"), count(last.Sessions, "session"))
		if n > 1 {
			c.Summary += fmt.Sprintf(" Busiest of the last %d minutes: %s.", n, count(peakOf(pts), "message"))
		}
	}
	return c
}

func count(v float64, noun string) string {
	if v == 1 {
		return "1 " + noun
	}
	return trimFloat(v) + " " + noun + "s"
}

func peakOf(pts []minutePoint) float64 {
	m := 0.0
	for _, p := range pts {
		m = math.Max(m, p.Messages)
	}
	return m
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten (at least 1).
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	if v >= 100 || v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// dashboardData is the dashboard's.
type dashboardData struct {
	Node        NodeInfo
	Uptime      string
	Chart       chart // wide
	ChartNarrow chart
	NowMessages string
	NowSessions string
	Active      int64
	Connections []connectionRow
	Health      Health
	Listeners   []listenerRow
}

// connectionRow is a connection's forwarding status with its catch-up
// progress, as the dashboard and the connections page show it.
type connectionRow struct {
	forwarder.Status
	Running     bool // the forwarder runs it (not disabled)
	Disabled    bool
	CatchingUp  bool
	Progress    float64 // 0..1
	ProgressPct int
}

func (c *console) connectionRow(st forwarder.Status) connectionRow {
	row := connectionRow{Status: st, Running: true}
	p, ok := c.rates.progress(st.Name, st.QueueDepth)
	row.CatchingUp, row.Progress, row.ProgressPct = ok, p, int(p*100)
	return row
}

func (c *console) dashboard(w http.ResponseWriter, r *http.Request, sess ui.Session) {
	info := c.s.node()
	d := dashboardData{
		Node:   info,
		Uptime: ui.HumanDuration(time.Duration(info.UptimeS) * time.Second),
		Active: info.Counters["smtp_sessions_active"],
		Health: c.s.health(r.Context()),
	}
	pts := c.rates.minutes(c.rates.read())
	d.Chart, d.ChartNarrow = makeChart(wideChart, pts, c.s.now()), makeChart(narrowChart, pts, c.s.now())
	d.NowMessages, d.NowSessions = "—", "—"
	if n := len(pts); n > 0 {
		d.NowMessages, d.NowSessions = trimFloat(pts[n-1].Messages), trimFloat(pts[n-1].Sessions)
	}
	list, err := c.s.connections()
	if err != nil {
		c.fail(w, r, sess, err)
		return
	}
	for _, st := range list.Connections {
		d.Connections = append(d.Connections, c.connectionRow(st.Status))
	}
	d.Listeners = c.listenerRows()
	p := c.page(r, sess, "Dashboard", d)
	p.Live = true
	c.render(w, r, http.StatusOK, "dashboard", p)
}

// listenerRow is one listener's configuration and state.
type listenerRow struct {
	Name, Address, Role string
	Disabled            bool
	State               string
	Sessions            int
	Bound               string
	AuthUsers           int
	TLS                 bool
}

func (c *console) listenerRows() []listenerRow {
	if c.s.opts.Config == nil {
		return nil
	}
	list, err := c.s.opts.Config.List("listeners")
	if err != nil {
		return nil
	}
	states := map[string]ListenerState{}
	if c.s.opts.ListenerStates != nil {
		states = c.s.opts.ListenerStates()
	}
	var out []listenerRow
	for _, o := range list {
		row := listenerRow{
			Name: str(o, "name"), Address: str(o, "address"), Role: str(o, "role"), Disabled: boolean(o, "disabled"),
			TLS: o["tls"] != nil,
		}
		if a, ok := o["auth"].(map[string]any); ok {
			if u, ok := a["users"].([]any); ok {
				row.AuthUsers = len(u)
			}
		}
		if st, ok := states[row.Name]; ok {
			row.State, row.Sessions, row.Bound = st.State, st.Sessions, st.Address
		} else if row.Disabled {
			row.State = "disabled"
		}
		out = append(out, row)
	}
	return out
}
