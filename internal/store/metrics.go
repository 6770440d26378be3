package store

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (docs/metrics.md).
const (
	MetricCommitSeconds = "chainmail_store_commit_seconds"
	MetricCommitBatch   = "chainmail_store_commit_batch_size"
)

// NewMetrics registers the committer's metrics in reg and returns the
// Options.OnCommit that feeds them.
func NewMetrics(reg prometheus.Registerer) func(size int, d time.Duration) {
	secs := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: MetricCommitSeconds, Help: "Duration of one group commit: the shared write transaction and its fsync.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
	})
	batch := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: MetricCommitBatch, Help: "Writes (messages, queue changes) sharing one commit.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	reg.MustRegister(secs, batch)
	return func(size int, d time.Duration) {
		secs.Observe(d.Seconds())
		batch.Observe(float64(size))
	}
}
