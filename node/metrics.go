package node

import (
	"github.com/parley-chat/parley/consensus/state"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are one node's Prometheus series. Each Server has its own registry, so several
// nodes can run in one test process.
type metrics struct {
	reg *prometheus.Registry

	connections     prometheus.Gauge
	framesIn        prometheus.Counter
	framesOut       prometheus.Counter
	eventsCommitted prometheus.Counter
	commitSeconds   prometheus.Histogram
	// applyWaitSeconds and logStoreSeconds take commitSeconds apart: the wait for this node's
	// own apply, and the disk.
	applyWaitSeconds prometheus.Histogram
	logStoreSeconds  prometheus.Histogram
	batchCommands    prometheus.Histogram
	applyEntries     prometheus.Histogram
	fanoutQueue      prometheus.Gauge
	slowConsumers    prometheus.Counter
	rateLimited      *prometheus.CounterVec
	opErrors         *prometheus.CounterVec
	relayLag         *prometheus.HistogramVec
	relayBacklog     *prometheus.GaugeVec
	bridgePublished  prometheus.Counter
	bridgeBacklog    prometheus.Gauge
	deadLetters      *prometheus.CounterVec
	amqpReconnects   *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_ws_connections",
			Help: "Open WebSocket connections."}),
		framesIn: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_ws_frames_in_total",
			Help: "WebSocket frames received from clients."}),
		framesOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_ws_frames_out_total",
			Help: "WebSocket frames written to clients (not those dropped with a slow consumer's queue)."}),
		eventsCommitted: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_events_committed_total",
			Help: "Room events this node applied from entries new to its Raft log: not those its log held when it started (replayed at every start) nor those a snapshot restored."}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_raft_commit_seconds",
			Help: "Time from proposing a batch to this node having applied it.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		applyWaitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_raft_apply_wait_seconds",
			Help:    "Part of parley_raft_commit_seconds spent, after the leader answered, waiting for this node to apply the batch itself (read-your-writes; about zero on the leader).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		logStoreSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_raft_log_store_seconds",
			Help:    "Time each write of entries to this node's Raft log took, fsync included: the disk's latency on every commit.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		batchCommands: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_raft_batch_commands",
			Help: "Commands per proposed Raft entry.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		applyEntries: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "parley_raft_apply_entries",
			Help: "Raft entries applied per FSM batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 11)}),
		fanoutQueue: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_fanout_queue_depth",
			Help: "Applied changes waiting to be pushed to clients."}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_slow_consumer_drops_total",
			Help: "Connections closed because they read too slowly."}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_rate_limited_total",
			Help: "Requests refused with M_LIMIT_EXCEEDED."}, []string{"limit"}),
		opErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_op_errors_total",
			Help: "Error replies by code."}, []string{"code"}),
		relayLag: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "parley_federation_relay_lag_seconds",
			Help: "Age of the first event of each confirmed outgoing federation transaction, per peer.",
			// 1 ms to 35 min: after an outage the first transaction through is as old as the
			// outage, and a top bucket of seconds would flatten every such lag into one.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 22)}, []string{"peer"}),
		relayBacklog: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "parley_federation_queue_depth",
			Help: "Events of the org's stream the leader's outbox has yet to relay to (or pass over for) each peer; 0 when caught up. Exported by the leader."},
			[]string{"peer"}),
		bridgePublished: prometheus.NewCounter(prometheus.CounterOpts{Name: "parley_bridge_events_published_total",
			Help: "Events of bridged rooms this node published to the org's bridge events exchange (as leader)."}),
		bridgeBacklog: prometheus.NewGauge(prometheus.GaugeOpts{Name: "parley_bridge_queue_depth",
			Help: "Events of the org's stream the leader has yet to publish to bridges (or pass over as not in a bridged room); 0 when caught up."}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_dead_letters_total",
			Help: "Messages this node dead-lettered, by source (federation, bridge) and error code."}, []string{"source", "code"}),
		amqpReconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "parley_amqp_reconnects_total",
			Help: "AMQP (re)connections, by component."}, []string{"component"}),
	}
	m.reg.MustRegister(m.relayLag, m.relayBacklog, m.bridgePublished, m.bridgeBacklog, m.deadLetters, m.amqpReconnects,
		m.connections, m.framesIn, m.framesOut, m.eventsCommitted, m.commitSeconds, m.applyWaitSeconds, m.logStoreSeconds,
		m.batchCommands, m.applyEntries, m.fanoutQueue, m.slowConsumers, m.rateLimited, m.opErrors,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector())
	return m
}

// watchState exports the size of the node's in-memory state, which grows with the history it
// keeps: the figure to size a node's memory by (docs/architecture.md).
func (m *metrics) watchState(store *state.Store) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "parley_state_keys",
			Help: "Keys in this node's in-memory state (events, their indexes, rooms, members, accounts)."},
			func() float64 { return float64(store.Size().Keys) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "parley_state_bytes",
			Help: "Bytes of the keys and values in this node's in-memory state; the heap holds more (indexes, slack)."},
			func() float64 { return float64(store.Size().Bytes) }))
}
