package balancer

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric names, documented in docs/balancer.md.
const (
	MetricFrontendSessions = "chainmail_balancer_frontend_sessions_total"
	MetricFrontendActive   = "chainmail_balancer_frontend_active_sessions"
	MetricFrontendRejected = "chainmail_balancer_frontend_rejected_total"
	MetricFrontendBytes    = "chainmail_balancer_frontend_bytes_total"
	MetricServerSessions   = "chainmail_balancer_server_sessions_total"
	MetricServerActive     = "chainmail_balancer_server_active_sessions"
	MetricServerBytes      = "chainmail_balancer_server_bytes_total"
	MetricServerFailures   = "chainmail_balancer_server_failures_total"
	MetricServerAvailable  = "chainmail_balancer_server_available"
	MetricServerHealthUp   = "chainmail_balancer_server_health_up"
	MetricServerState      = "chainmail_balancer_server_state"
	MetricServerWeight     = "chainmail_balancer_server_effective_weight"
	MetricServerChecks     = "chainmail_balancer_server_checks_total"
)

var (
	descFrontendSessions = prometheus.NewDesc(MetricFrontendSessions, "Client sessions accepted.", []string{"frontend"}, nil)
	descFrontendActive   = prometheus.NewDesc(MetricFrontendActive, "Client sessions open now.", []string{"frontend"}, nil)
	descFrontendRejected = prometheus.NewDesc(MetricFrontendRejected, "Client sessions answered 421 4.3.2, by reason (max_sessions, no_server).", []string{"frontend", "reason"}, nil)
	descFrontendBytes    = prometheus.NewDesc(MetricFrontendBytes, "Bytes relayed, in (client to server) and out, counted when a session ends.", []string{"frontend", "direction"}, nil)
	descServerSessions   = prometheus.NewDesc(MetricServerSessions, "Sessions bound to the server (after its 220 greeting).", []string{"pool", "server"}, nil)
	descServerActive     = prometheus.NewDesc(MetricServerActive, "Sessions holding a slot on the server now.", []string{"pool", "server"}, nil)
	descServerBytes      = prometheus.NewDesc(MetricServerBytes, "Bytes relayed, counted when a session ends.", []string{"pool", "server", "direction"}, nil)
	descServerFailures   = prometheus.NewDesc(MetricServerFailures, "Failed tries by kind (connect, greeting_timeout, greeting_rejected, greeting_error).", []string{"pool", "server", "kind"}, nil)
	descServerAvailable  = prometheus.NewDesc(MetricServerAvailable, "1 if the server may take a new session now.", []string{"pool", "server"}, nil)
	descServerHealthUp   = prometheus.NewDesc(MetricServerHealthUp, "Active health check verdict, 1 up, 0 down; absent without a check.", []string{"pool", "server"}, nil)
	descServerState      = prometheus.NewDesc(MetricServerState, "1 for the server's administrative state (ready, drain, maint).", []string{"pool", "server", "state"}, nil)
	descServerWeight     = prometheus.NewDesc(MetricServerWeight, "Weight in use now (ramping during slow start).", []string{"pool", "server"}, nil)
	descServerChecks     = prometheus.NewDesc(MetricServerChecks, "Active health checks run.", []string{"pool", "server"}, nil)
)

// statsCollector reads the balancer's counters at scrape time, so servers
// added and removed by a reload need no registration.
type statsCollector struct{ b *Balancer }

func newRegistry(b *Balancer) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(statsCollector{b}, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func (statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFrontendSessions, descFrontendActive, descFrontendRejected,
		descFrontendBytes, descServerSessions, descServerActive, descServerBytes, descServerFailures,
		descServerAvailable, descServerHealthUp, descServerState, descServerWeight, descServerChecks} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	for _, f := range c.b.Frontends() {
		ch <- prometheus.MustNewConstMetric(descFrontendSessions, counter, float64(f.TotalSessions), f.Name)
		ch <- prometheus.MustNewConstMetric(descFrontendActive, gauge, float64(f.ActiveSessions), f.Name)
		ch <- prometheus.MustNewConstMetric(descFrontendRejected, counter, float64(f.Rejected), f.Name, "max_sessions")
		ch <- prometheus.MustNewConstMetric(descFrontendRejected, counter, float64(f.NoServer), f.Name, "no_server")
		ch <- prometheus.MustNewConstMetric(descFrontendBytes, counter, float64(f.BytesIn), f.Name, "in")
		ch <- prometheus.MustNewConstMetric(descFrontendBytes, counter, float64(f.BytesOut), f.Name, "out")
	}
	for _, p := range c.b.Pools() {
		for _, s := range p.Servers {
			l := []string{p.Name, s.Name}
			ch <- prometheus.MustNewConstMetric(descServerSessions, counter, float64(s.TotalSessions), l...)
			ch <- prometheus.MustNewConstMetric(descServerActive, gauge, float64(s.ActiveSessions), l...)
			ch <- prometheus.MustNewConstMetric(descServerBytes, counter, float64(s.BytesIn), p.Name, s.Name, "in")
			ch <- prometheus.MustNewConstMetric(descServerBytes, counter, float64(s.BytesOut), p.Name, s.Name, "out")
			for _, k := range failKinds {
				ch <- prometheus.MustNewConstMetric(descServerFailures, counter, float64(s.Failures[k]), p.Name, s.Name, k)
			}
			ch <- prometheus.MustNewConstMetric(descServerAvailable, gauge, b2f(s.Available), l...)
			if s.Health != "unchecked" {
				ch <- prometheus.MustNewConstMetric(descServerHealthUp, gauge, b2f(s.Health == "up"), l...)
			}
			for _, st := range []State{StateReady, StateDrain, StateMaint} {
				ch <- prometheus.MustNewConstMetric(descServerState, gauge, b2f(s.State == st), p.Name, s.Name, string(st))
			}
			ch <- prometheus.MustNewConstMetric(descServerWeight, gauge, s.EffectiveWeight, l...)
			ch <- prometheus.MustNewConstMetric(descServerChecks, counter, float64(s.Checks), l...)
		}
	}
}

func b2f(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
