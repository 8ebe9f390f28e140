package buffer

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	helperEnv     = "FERRY_BUFFER_HELPER_DIR"
	helperSyncEnv = "FERRY_BUFFER_HELPER_SYNC"
)

// helperMain runs in a child process (see TestMain): four goroutines append
// batches of 1-5 records to the log in the directory named by helperEnv, one
// of them acks records some way behind, and each prints "first count" after
// every Append that returned, until the process is killed.
func helperMain() int {
	mode := SyncAlways
	if os.Getenv(helperSyncEnv) == "batch" {
		mode = SyncBatch
	}
	l, err := Open(os.Getenv(helperEnv), Options{Sync: mode, SegmentBytes: 64 << 10, SyncInterval: time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			buf := make([]byte, 0, 32)
			for i := g; ; i++ {
				recs := make([][]byte, 1+i%5)
				// Contents depend on the seq, which is only known after
				// Append: write a placeholder of the right length, and
				// check length and placeholder pattern instead.
				for j := range recs {
					recs[j] = helperRec(g, i, j)
				}
				first, err := l.Append(recs...)
				if err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				if g == 0 {
					if next := l.NextSeq(); next > 500 {
						for s := l.Acked(); s < next-500; s++ {
							l.Ack(s)
						}
					}
				}
				buf = strconv.AppendUint(buf[:0], first, 10)
				buf = append(buf, ' ')
				buf = strconv.AppendInt(buf, int64(len(recs)), 10)
				buf = append(buf, ' ')
				buf = strconv.AppendInt(buf, int64(g), 10)
				buf = append(buf, ' ')
				buf = strconv.AppendInt(buf, int64(i), 10)
				buf = append(buf, '\n')
				os.Stdout.Write(buf) // one write per line: atomic on a pipe
			}
		})
	}
	wg.Wait()
	return 0
}

// helperRec is record j of batch i of goroutine g.
func helperRec(g, i, j int) []byte {
	return []byte(fmt.Sprintf("g%d i%d j%d %s", g, i, j, strings.Repeat("x", (i*7+j)%150)))
}

// TestKill9 runs the helper as a subprocess and kills it with SIGKILL at a
// random moment, 50 times under SyncAlways (and a few under SyncBatch).
// After each kill it reopens the log and checks that every record whose
// Append returned is present and intact, that the records from the cursor
// on are consecutive (in order, no duplicates, no holes), and that the next
// seq is beyond everything reported.
func TestKill9(t *testing.T) {
	type round struct{ mode string }
	var rounds []round
	for range 50 {
		rounds = append(rounds, round{"always"})
	}
	for range 5 {
		rounds = append(rounds, round{"batch"})
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	start := time.Now()
	total := 0
	for r, rd := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), helperEnv+"="+dir, helperSyncEnv+"="+rd.mode)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		type batch struct {
			first   uint64
			n, g, i int
		}
		var (
			mu      sync.Mutex
			batches []batch
			started = make(chan struct{})
			readErr = make(chan error, 1)
		)
		go func() {
			sc := bufio.NewScanner(out)
			once := sync.Once{}
			for sc.Scan() {
				var b batch
				if _, err := fmt.Sscan(sc.Text(), &b.first, &b.n, &b.g, &b.i); err != nil {
					readErr <- fmt.Errorf("helper printed %q: %v", sc.Text(), err)
					return
				}
				mu.Lock()
				batches = append(batches, b)
				mu.Unlock()
				once.Do(func() { close(started) })
			}
			readErr <- nil
		}()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("round %d: helper printed nothing", r)
		}
		time.Sleep(time.Duration(rng.IntN(60_000)) * time.Microsecond)
		cmd.Process.Signal(syscall.SIGKILL)
		if err := <-readErr; err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		l, err := Open(dir, Options{Sync: SyncNone})
		if err != nil {
			t.Fatal(err)
		}
		st := l.Stats()
		from := l.Acked()
		got := map[uint64][]byte{}
		var seqs []uint64
		next := from
		for {
			nx, err := l.Scan(next, 256, func(seq uint64, data []byte) error {
				seqs = append(seqs, seq)
				got[seq] = append([]byte(nil), data...)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if nx == next {
				break
			}
			next = nx
		}
		l.Close()
		if st.Corrupt != 0 {
			t.Fatalf("round %d: Stats %+v", r, st)
		}
		for k, s := range seqs {
			if s != from+uint64(k) {
				t.Fatalf("round %d: record %d after the cursor %d has seq %d (hole or duplicate)", r, k, from, s)
			}
		}
		var maxSeq uint64
		for _, b := range batches {
			for j := range b.n {
				seq := b.first + uint64(j)
				maxSeq = max(maxSeq, seq)
				if seq < from {
					continue // acked and possibly deleted
				}
				data, ok := got[seq]
				if !ok {
					t.Fatalf("round %d (%s): seq %d was appended (Append returned) but is missing; cursor %d, next %d",
						r, rd.mode, seq, from, st.NextSeq)
				}
				if want := helperRec(b.g, b.i, j); string(data) != string(want) {
					t.Fatalf("round %d: seq %d holds %q, want %q", r, seq, data, want)
				}
			}
		}
		if st.NextSeq <= maxSeq {
			t.Fatalf("round %d: NextSeq %d but seq %d was appended", r, st.NextSeq, maxSeq)
		}
		total += len(batches)
	}
	t.Logf("%d rounds, %d reported appends, %v", len(rounds), total, time.Since(start))
}
