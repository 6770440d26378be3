package forwarder

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (docs/metrics.md).
const (
	MetricForwarded      = "chainmail_forward_messages_total"
	MetricForwardSeconds = "chainmail_forward_seconds"
	MetricLagSeconds     = "chainmail_replication_lag_seconds"
	MetricConnectionUp   = "chainmail_connection_up"
	MetricQueueDepth     = "chainmail_queue_depth"
	MetricDeadLetters    = "chainmail_queue_dead_letters"
)

// Metrics are the forwarder's; a nil *Metrics records nothing.
type Metrics struct {
	forwardedC *prometheus.CounterVec
	seconds    *prometheus.HistogramVec
	lag        *prometheus.HistogramVec
	up         *prometheus.GaugeVec
}

// NewMetrics registers the forwarding metrics, and the queue gauges read
// from f at each scrape, in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		forwardedC: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricForwarded, Help: "Forwarding outcomes by connection and result (delivered, deferred, failed, dead, loop)."}, []string{"connection", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricForwardSeconds, Help: "Time to send one message to the peer, until its 250.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"connection"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricLagSeconds, Help: "Replication lag: from the origin node's receipt to the peer's 250.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 22)}, []string{"connection"}),
		up: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricConnectionUp, Help: "1 when the connection's peer answers (up or catching-up), else 0."}, []string{"connection"}),
	}
	reg.MustRegister(m.forwardedC, m.seconds, m.lag, m.up)
	return m
}

// RegisterQueueGauges adds queue depth and dead letters per connection,
// read from status at each scrape.
func RegisterQueueGauges(reg prometheus.Registerer, f *Forwarder) {
	reg.MustRegister(queueCollector{f})
}

var (
	descDepth = prometheus.NewDesc(MetricQueueDepth, "Entries waiting in a connection's queue.", []string{"connection"}, nil)
	descDead  = prometheus.NewDesc(MetricDeadLetters, "Entries in a connection's dead-letter list.", []string{"connection"}, nil)
)

type queueCollector struct{ f *Forwarder }

func (q queueCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descDepth; ch <- descDead }

func (q queueCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range q.f.Status() {
		ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(s.QueueDepth), s.Name)
		ch <- prometheus.MustNewConstMetric(descDead, prometheus.GaugeValue, float64(s.DeadLetters), s.Name)
	}
}

func (m *Metrics) forwarded(conn, result string) {
	if m != nil {
		m.forwardedC.WithLabelValues(conn, result).Inc()
	}
}

func (m *Metrics) delivered(conn string, took, lag time.Duration) {
	if m == nil {
		return
	}
	m.forwardedC.WithLabelValues(conn, "delivered").Inc()
	m.seconds.WithLabelValues(conn).Observe(took.Seconds())
	m.lag.WithLabelValues(conn).Observe(lag.Seconds())
}

func (m *Metrics) state(conn, state string) {
	if m == nil {
		return
	}
	v := 0.0
	if state == StateUp || state == StateCatchingUp {
		v = 1
	}
	m.up.WithLabelValues(conn).Set(v)
}
