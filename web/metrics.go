package web

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names of this package; docs/metrics.md describes each.
const (
	MetricHTTPRequests     = "chainmail_http_requests_total"
	MetricHTTPDuration     = "chainmail_http_request_duration_seconds"
	MetricHTTPInFlight     = "chainmail_http_requests_in_flight"
	MetricHTTPAuthFailures = "chainmail_http_auth_failures_total"
)

type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	inFlight     prometheus.Gauge
	authFailures *prometheus.CounterVec
}

// newMetrics registers the web metrics in reg. Registering twice in one
// registry is an error, which is what two servers sharing one would be.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricHTTPRequests,
			Help: "HTTP requests answered by the API and console, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricHTTPDuration,
			Help: "Time to answer an HTTP request, by route pattern (message downloads included).",
			// From a cached digest (sub-millisecond) to a large download.
			Buckets: []float64{.001, .005, .025, .1, .5, 2.5, 10, 60},
		}, []string{"route"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricHTTPInFlight,
			Help: "HTTP requests being answered now.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricHTTPAuthFailures,
			Help: "Rejected API authentications: reason token, password, or limited (refused by the failed-login limit).",
		}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.inFlight, m.authFailures} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("web: register metrics: %w", err)
		}
	}
	// Start the reasons at zero so a rate() over them works from the start.
	for _, r := range []string{"token", "password", "limited"} {
		m.authFailures.WithLabelValues(r)
	}
	return m, nil
}

// instrument counts and times a route's requests. The method label is
// bounded to the ones the server knows so a client cannot grow it.
func (m *metrics) instrument(route string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		m.inFlight.Inc()
		rec := &statusRecorder{ResponseWriter: w}
		defer func() {
			m.inFlight.Dec()
			m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
			m.requests.WithLabelValues(route, methodLabel(r.Method), strconv.Itoa(rec.code())).Inc()
		}()
		next.ServeHTTP(rec, r)
	})
}

func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// statusRecorder remembers the status code. Unwrap lets
// http.ResponseController reach the connection (write deadlines, flush).
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusRecorder) code() int {
	if s.status == 0 {
		return http.StatusOK
	}
	return s.status
}
