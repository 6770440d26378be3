package listener

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (documented in docs/metrics.md).
const (
	MetricSessions        = "chainmail_smtp_sessions_total"
	MetricSessionsActive  = "chainmail_smtp_sessions_active"
	MetricMessages        = "chainmail_smtp_messages_total"
	MetricBytes           = "chainmail_smtp_message_bytes_total"
	MetricRefusals        = "chainmail_smtp_refusals_total"
	MetricDeliverySeconds = "chainmail_smtp_delivery_seconds"
)

// Metrics are the listeners' counters; a nil *Metrics records nothing.
type Metrics struct {
	sessions *prometheus.CounterVec
	active   *prometheus.GaugeVec
	messages *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	refusals *prometheus.CounterVec
	delivery *prometheus.HistogramVec
}

// NewMetrics registers the listener metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricSessions, Help: "SMTP connections admitted, by listener."}, []string{"listener"}),
		active:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: MetricSessionsActive, Help: "SMTP connections open now, by listener."}, []string{"listener"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricMessages, Help: "Messages received, by listener and result (archived, duplicate, rejected)."}, []string{"listener", "result"}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricBytes, Help: "Bytes of messages accepted, by listener."}, []string{"listener"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRefusals, Help: "Refusals by listener and SMTP reply code (0: connection closed without a reply)."}, []string{"listener", "code"}),
		delivery: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricDeliverySeconds, Help: "From the end of DATA to the reply: archive, queue and fsync.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"listener"}),
	}
	reg.MustRegister(m.sessions, m.active, m.messages, m.bytes, m.refusals, m.delivery)
	return m
}

func (m *Metrics) refused(listener string, code int) {
	if m != nil {
		m.refusals.WithLabelValues(listener, strconv.Itoa(code)).Inc()
	}
}

func (m *Metrics) opened(listener string) {
	if m != nil {
		m.sessions.WithLabelValues(listener).Inc()
		m.active.WithLabelValues(listener).Inc()
	}
}

func (m *Metrics) closed(listener string) {
	if m != nil {
		m.active.WithLabelValues(listener).Dec()
	}
}

func (m *Metrics) message(listener, result string, size int64, seconds float64) {
	if m == nil {
		return
	}
	m.messages.WithLabelValues(listener, result).Inc()
	if result != "rejected" {
		m.bytes.WithLabelValues(listener).Add(float64(size))
		m.delivery.WithLabelValues(listener).Observe(seconds)
	}
}
