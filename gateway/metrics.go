package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the gateway's Prometheus collectors. A nil *Metrics records
// nothing, so the gateway never checks whether metrics are on.
type Metrics struct {
	connections  *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	active       prometheus.Gauge
	channels     prometheus.Gauge
	bytes        *prometheus.CounterVec
	hopSetup     prometheus.Histogram
	hopFailures  prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "connections_total",
			Help: "SSH connections accepted, by listener (main or vps_port).",
		}, []string{"listener"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "auth_failures_total",
			Help: "Refused logins, by reason: key (a key refused for the route asked), timeout (login grace time), banned (source throttled), unauthenticated (closed without logging in), interactive (the VPS refused keyboard-interactive).",
		}, []string{"reason"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "active_connections",
			Help: "Open downstream SSH connections.",
		}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "active_channels",
			Help: "Open relayed channels (sessions, forwards, agent and X11 channels).",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "bytes_total",
			Help: "Bytes on downstream connections (in = from clients, out = to clients), encrypted size.",
		}, []string{"direction"}),
		hopSetup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "hop_setup_seconds",
			Help:    "Time to open the hop to a VPS's sshd: relay dial, handshake and login.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}),
		hopFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "kohakuriver", Subsystem: "gateway", Name: "hop_failures_total",
			Help: "Hops that could not be opened (VPS stopped, node down, sshd refused...).",
		}),
	}
	for _, c := range []prometheus.Collector{m.connections, m.authFailures, m.active, m.channels, m.bytes, m.hopSetup, m.hopFailures} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) connOpened(listener string) {
	if m == nil {
		return
	}
	m.connections.WithLabelValues(listener).Inc()
	m.active.Inc()
}

func (m *Metrics) connClosed(in, out int64) {
	if m == nil {
		return
	}
	m.active.Dec()
	m.bytes.WithLabelValues("in").Add(float64(in))
	m.bytes.WithLabelValues("out").Add(float64(out))
}

func (m *Metrics) authFailed(reason string) {
	if m == nil {
		return
	}
	m.authFailures.WithLabelValues(reason).Inc()
}

func (m *Metrics) channel(delta int) {
	if m == nil {
		return
	}
	m.channels.Add(float64(delta))
}

func (m *Metrics) hop(start time.Time, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.hopFailures.Inc()
		return
	}
	m.hopSetup.Observe(time.Since(start).Seconds())
}
