package opcua

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/gopcua/opcua/ua"
)

// poll reads every tag each interval, in batches of at most
// max_items_per_request (and the server's MaxNodesPerRead), one
// sink.Readings call per cycle. A transport error ends the session.
func (c *Client) poll(ctx context.Context, cn *conn, ids []*ua.NodeID, errs []error) (bool, error) {
	lim := c.readLimits(ctx, cn.cl)
	batch := c.dev.MaxItemsPerRequest
	if lim.nodesPerRead > 0 && int(lim.nodesPerRead) < batch {
		batch = int(lim.nodesPerRead)
	}
	var resolved []int
	for i, n := range ids {
		if n != nil {
			resolved = append(resolved, i)
		}
	}
	c.st.failedIt.Store(int64(len(ids) - len(resolved)))
	up := false
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	out := make([]adapters.Reading, len(c.tags))
	for {
		select {
		case <-ctx.Done():
			return up, nil
		case <-cn.dead:
			return up, fmt.Errorf("connection to %s lost", c.dev.Endpoint)
		case <-timer.C:
		case <-c.kick: // a write: read at once; the cadence stays on its grid
		}
		now := time.Now()
		for i, e := range errs {
			if e != nil {
				out[i] = adapters.Reading{Device: c.dev.Name, Tag: c.tags[i].cfg.Name, Quality: adapters.Bad, Time: now, Err: e.Error()}
			}
		}
		for off := 0; off < len(resolved); {
			n := min(batch, len(resolved)-off)
			part := resolved[off : off+n]
			req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnBoth, NodesToRead: make([]*ua.ReadValueID, n)}
			for k, i := range part {
				req.NodesToRead[k] = &ua.ReadValueID{NodeID: ids[i], AttributeID: ua.AttributeIDValue}
			}
			c.st.reads.Add(1)
			res, err := cn.cl.Read(ctx, req)
			if err == nil && res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
				err = res.ResponseHeader.ServiceResult
			}
			if err != nil {
				if ctx.Err() != nil {
					return up, nil
				}
				if errors.Is(err, ua.StatusBadTooManyOperations) && n > 1 {
					batch = max(1, n/2)
					c.log.Info("opcua server refused the read size, halving it", "batch", batch)
					continue
				}
				err = fmt.Errorf("read: %w", err)
				return up, err // Run marks every tag bad
			}
			rnow := time.Now()
			for k, i := range part {
				var dv *ua.DataValue
				if k < len(res.Results) {
					dv = res.Results[k]
				}
				out[i] = reading(c.dev.Name, c.tags[i].cfg.Name, dv, rnow)
			}
			off += n
		}
		if !up {
			up = true
			c.st.lastFirstDataLag.Store(int64(time.Since(cn.start)))
			c.setState(true, nil)
		}
		c.deliver(out)
		timer.Reset(time.Until(nextTick(start, time.Now(), c.dev.Interval)))
	}
}

// nextTick is the first tick start + k*interval strictly after now.
func nextTick(start, now time.Time, interval time.Duration) time.Time {
	k := now.Sub(start)/interval + 1
	return start.Add(k * interval)
}
