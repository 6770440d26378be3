package archive

import "github.com/prometheus/client_golang/prometheus"

// Metric names (docs/metrics.md).
const (
	MetricMessages = "chainmail_archive_messages"
	MetricBytes    = "chainmail_archive_bytes"
)

var (
	descMessages = prometheus.NewDesc(MetricMessages, "Messages in the archive (deduplicated).", nil, nil)
	descBytes    = prometheus.NewDesc(MetricBytes, "Bytes of archived messages.", nil, nil)
)

type collector struct{ s *Store }

// NewCollector reports the archive's size at each scrape.
func NewCollector(s *Store) prometheus.Collector { return collector{s} }

func (c collector) Describe(ch chan<- *prometheus.Desc) { ch <- descMessages; ch <- descBytes }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(descMessages, prometheus.GaugeValue, float64(st.Messages))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(st.Bytes))
}
