package host

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kohakuriver/kohakuriver/store"
)

// adminHandler serves the operator's endpoints on the admin listener:
//
//	/metrics  Prometheus: gateway metrics, node and VPS states, Go runtime
//	/healthz  the process is alive
//	/readyz   the store answers and the gateway listens
//
// It carries no credentials, so bind it to loopback or a management network.
func (h *Host) adminHandler(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if _, err := h.store.ListNodes(ctx); err != nil {
			http.Error(w, "store not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if h.gw.Addr() == nil {
			http.Error(w, "ssh gateway not listening", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// clusterCollector reports node and VPS states from the store at scrape
// time, so the numbers can never drift from the truth.
type clusterCollector struct {
	st    store.Store
	nodes *prometheus.Desc
	vps   *prometheus.Desc
	up    *prometheus.Desc
}

func newClusterCollector(st store.Store) *clusterCollector {
	return &clusterCollector{
		st:    st,
		nodes: prometheus.NewDesc("kohakuriver_nodes", "Nodes by status.", []string{"status"}, nil),
		vps:   prometheus.NewDesc("kohakuriver_vps", "VPSs by node and status.", []string{"node", "status"}, nil),
		up:    prometheus.NewDesc("kohakuriver_node_up", "1 if the node's agent is heartbeating.", []string{"node"}, nil),
	}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.nodes
	ch <- c.vps
	ch <- c.up
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := c.st.ListNodes(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.nodes, err)
		return
	}
	byStatus := map[store.NodeStatus]float64{store.NodeOnline: 0, store.NodeOffline: 0}
	for _, n := range nodes {
		byStatus[n.Status]++
		up := 0.0
		if n.Status == store.NodeOnline {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, n.Name)
	}
	for s, v := range byStatus {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, v, string(s))
	}
	vpss, err := c.st.ListVPS(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.vps, err)
		return
	}
	type key struct{ node, status string }
	counts := map[key]float64{}
	for _, v := range vpss {
		counts[key{v.Node, string(v.Status)}]++
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.vps, prometheus.GaugeValue, v, k.node, k.status)
	}
}

func newRegistry(st store.Store) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), newClusterCollector(st))
	return reg
}
