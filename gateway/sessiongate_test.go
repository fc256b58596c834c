package gateway

import (
	"testing"
	"time"
)

func TestSessionGate(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name string
		// before: sessions admitted before no-more-sessions at t0.
		before int
		// after: offsets from t0 of later session opens, and the verdicts.
		after []time.Duration
		want  []bool
	}{
		{name: "open that raced the request", before: 0, after: []time.Duration{time.Millisecond}, want: []bool{true}},
		{name: "a second session after the raced one", before: 0, after: []time.Duration{time.Millisecond, 2 * time.Millisecond}, want: []bool{true, false}},
		{name: "a session after the first one", before: 1, after: []time.Duration{time.Millisecond}, want: []bool{false}},
		{name: "-N, then a session much later", before: 0, after: []time.Duration{lateSessionGrace}, want: []bool{false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var g sessionGate
			for i := 0; i < tt.before; i++ {
				if !g.admit(t0.Add(-time.Second)) {
					t.Fatal("session refused before no-more-sessions")
				}
			}
			g.close(t0)
			g.close(t0.Add(time.Second)) // a repeat does not move the deadline
			for i, d := range tt.after {
				if got := g.admit(t0.Add(d)); got != tt.want[i] {
					t.Fatalf("open %d at +%v: admitted %v, want %v", i, d, got, tt.want[i])
				}
			}
		})
	}
}
