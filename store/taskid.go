package store

import (
	"crypto/rand"
	"encoding/binary"
	"strconv"
	"sync"
	"time"
)

// Task ids are snowflakes, as in the original cluster: 41 bits of
// milliseconds since snowflakeEpoch, 10 bits of random worker id chosen per
// process, 12 bits of sequence. Ids made after 2024 have 19 digits.
var snowflakeEpoch = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

type snowflake struct {
	mu     sync.Mutex
	worker int64
	lastMS int64
	seq    int64
}

var ids = newSnowflake()

func newSnowflake() *snowflake {
	var b [2]byte
	_, _ = rand.Read(b[:])
	return &snowflake{worker: int64(binary.BigEndian.Uint16(b[:]) & 0x3ff)}
}

// NewTaskID returns a new unique 19-digit task id.
func NewTaskID() string { return ids.next(time.Now()) }

func (s *snowflake) next(now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ms := now.Sub(snowflakeEpoch).Milliseconds()
	if ms < s.lastMS {
		ms = s.lastMS // clock went back: keep ids increasing
	}
	if ms == s.lastMS {
		s.seq = (s.seq + 1) & 0xfff
		if s.seq == 0 {
			ms++ // sequence exhausted within this millisecond: borrow the next
		}
	} else {
		s.seq = 0
	}
	s.lastMS = ms
	id := ms<<22 | s.worker<<12 | s.seq
	// Ids made before ~2024 would be shorter than 19 digits; pad by the
	// smallest 19-digit value so the shape is always the same.
	const min19 = 1_000_000_000_000_000_000
	if id < min19 {
		id += min19
	}
	return strconv.FormatInt(id, 10)
}
