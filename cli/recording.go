package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"text/tabwriter"
	"time"
)

// RecordingCmd lists and replays the host's session recordings
// (host --record-sessions). It reads the host's data dir directly, so run
// it on the host.
type RecordingCmd struct {
	List RecordingListCmd `cmd:"" help:"List recorded sessions."`
	Play RecordingPlayCmd `cmd:"" help:"Replay a recorded session in this terminal (or use asciinema play FILE)."`
}

// RecordingListCmd lists recordings, newest last.
type RecordingListCmd struct {
	DataDir string `name:"data-dir" default:".kohakuriver" env:"KOHAKURIVER_DATA_DIR" help:"The host's data directory."`
}

type castInfo struct {
	path     string
	start    time.Time
	duration time.Duration
	size     int64
	width    int
	height   int
}

// Run prints one line per recording.
func (c *RecordingListCmd) Run() error {
	files, err := filepath.Glob(filepath.Join(c.DataDir, "recordings", "*", "*.cast"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		fmt.Printf("no recordings under %s/recordings (start the host with --record-sessions)\n", c.DataDir)
		return nil
	}
	var infos []castInfo
	for _, f := range files {
		info, err := readCastInfo(f)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kohakuriver: skipping %s: %v\n", f, err)
			continue
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].start.Before(infos[j].start) })
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STARTED\tDURATION\tSIZE\tTERMINAL\tFILE")
	for _, i := range infos {
		fmt.Fprintf(tw, "%s\t%s\t%d KiB\t%dx%d\t%s\n", i.start.Local().Format(time.DateTime),
			i.duration.Round(time.Second), (i.size+1023)/1024, i.width, i.height, i.path)
	}
	return tw.Flush()
}

type castHeader struct {
	Version   int   `json:"version"`
	Width     int   `json:"width"`
	Height    int   `json:"height"`
	Timestamp int64 `json:"timestamp"`
}

func openCast(path string) (*os.File, *bufio.Scanner, castHeader, error) {
	var h castHeader
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, h, err
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	if !sc.Scan() {
		f.Close()
		return nil, nil, h, errors.New("empty recording")
	}
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil || h.Version != 2 {
		f.Close()
		return nil, nil, h, fmt.Errorf("not an asciicast v2 file")
	}
	return f, sc, h, nil
}

func readCastInfo(path string) (castInfo, error) {
	f, sc, h, err := openCast(path)
	if err != nil {
		return castInfo{}, err
	}
	defer f.Close()
	info := castInfo{path: path, start: time.Unix(h.Timestamp, 0), width: h.Width, height: h.Height}
	for sc.Scan() {
		var ev []any
		if json.Unmarshal(sc.Bytes(), &ev) == nil && len(ev) == 3 {
			if t, ok := ev[0].(float64); ok {
				info.duration = time.Duration(t * float64(time.Second))
			}
		}
	}
	if st, err := f.Stat(); err == nil {
		info.size = st.Size()
	}
	return info, nil
}

// RecordingPlayCmd replays the output of a recording with its timing.
type RecordingPlayCmd struct {
	File    string        `arg:"" type:"existingfile" help:"The .cast file (see recording list)."`
	Speed   float64       `name:"speed" default:"1" help:"Playback speed factor."`
	MaxIdle time.Duration `name:"max-idle" default:"2s" help:"Cap on pauses between events."`
}

// Run writes the recorded output to stdout.
func (c *RecordingPlayCmd) Run() error {
	return playCast(c.File, os.Stdout, c.Speed, c.MaxIdle, time.Sleep)
}

func playCast(path string, w io.Writer, speed float64, maxIdle time.Duration, sleep func(time.Duration)) error {
	if speed <= 0 {
		return errors.New("--speed must be positive")
	}
	f, sc, _, err := openCast(path)
	if err != nil {
		return err
	}
	defer f.Close()
	last := 0.0
	for sc.Scan() {
		var ev []any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || len(ev) != 3 {
			return fmt.Errorf("%s: bad event line %q", path, sc.Text())
		}
		t, _ := ev[0].(float64)
		kind, _ := ev[1].(string)
		data, _ := ev[2].(string)
		if kind != "o" {
			continue
		}
		if d := time.Duration((t - last) / speed * float64(time.Second)); d > 0 {
			sleep(min(d, maxIdle))
		}
		last = t
		if _, err := io.WriteString(w, data); err != nil {
			return err
		}
	}
	return sc.Err()
}
