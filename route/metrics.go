package route

import "github.com/prometheus/client_golang/prometheus"

// Metric names (docs/metrics.md).
const (
	MetricRouted = "chainmail_route_messages_total"
	MetricLoops  = "chainmail_loops_detected_total"
)

type promMetrics struct {
	routed *prometheus.CounterVec
	loops  *prometheus.CounterVec
}

// NewMetrics registers the routing metrics in reg.
func NewMetrics(reg prometheus.Registerer) Metrics {
	m := &promMetrics{
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRouted, Help: "Messages routed, by route and whether they were new to the archive."}, []string{"route", "new"}),
		loops:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricLoops, Help: "Messages not forwarded because their trace already named this node or the peer, by listener."}, []string{"listener"}),
	}
	reg.MustRegister(m.routed, m.loops)
	return m
}

func (m *promMetrics) Delivered(route string, isNew bool) {
	v := "false"
	if isNew {
		v = "true"
	}
	m.routed.WithLabelValues(route, v).Inc()
}

func (m *promMetrics) LoopDetected(listener string) { m.loops.WithLabelValues(listener).Inc() }
