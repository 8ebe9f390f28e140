package opcua

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"
)

// poll reads every tag each interval, in batches of at most
// max_items_per_request (and the server's MaxNodesPerRead), one
// sink.Readings call per cycle. A transport error ends the session.
func (c *Client) poll(ctx context.Context, cn *conn, ids []*ua.NodeID, errs []error) (bool, error) {
	batch := readSize(c.dev, c.readLimits(ctx, cn.cl)) // as NewPlan: the read groups `ferry plan` prints
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
		if err := c.readTags(ctx, cn.cl, ids, resolved, &batch, out); err != nil {
			if ctx.Err() != nil {
				return up, nil
			}
			return up, err // Run marks every tag bad
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

// readTags reads the tags resolved (indexes into ids) in Read requests of
// at most *batch nodes, into out; a server that refuses the size halves
// *batch.
func (c *Client) readTags(ctx context.Context, cl *opcua.Client, ids []*ua.NodeID, resolved []int, batch *int, out []adapters.Reading) error {
	for off := 0; off < len(resolved); {
		n := min(*batch, len(resolved)-off)
		part := resolved[off : off+n]
		req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnBoth, NodesToRead: make([]*ua.ReadValueID, n)}
		for k, i := range part {
			req.NodesToRead[k] = &ua.ReadValueID{NodeID: ids[i], AttributeID: ua.AttributeIDValue}
		}
		c.st.reads.Add(1)
		res, err := cl.Read(ctx, req)
		if err == nil && res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
			err = res.ResponseHeader.ServiceResult
		}
		if err != nil {
			if errors.Is(err, ua.StatusBadTooManyOperations) && n > 1 {
				*batch = max(1, n/2)
				c.log.Info("opcua server refused the read size, halving it", "batch", *batch)
				continue
			}
			return fmt.Errorf("read: %w", err)
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
	return nil
}

// ReadOnce connects to dev (stateDir as for NewClient), reads every tag
// once in the read groups of its plan, and returns one reading per tag in
// config order: value, quality and source time. A tag whose node cannot
// be resolved is Bad with the reason. The error is the connection's or a
// failed Read's; the readings are then every tag Bad with it.
func ReadOnce(ctx context.Context, dev config.OPCUADevice, stateDir string) ([]adapters.Reading, error) {
	c, err := NewClient(dev, stateDir, nil, nil)
	if err != nil {
		return nil, err
	}
	out := make([]adapters.Reading, len(c.tags))
	fail := func(err error) ([]adapters.Reading, error) {
		now := time.Now()
		for i, t := range c.tags {
			out[i] = adapters.Reading{Device: dev.Name, Tag: t.cfg.Name, Quality: adapters.Bad, Time: now, Err: err.Error()}
		}
		return out, err
	}
	cn, err := c.connect(ctx)
	if err != nil {
		return fail(err)
	}
	defer cn.close()
	ids, errs := c.resolve(cn.cl.Namespaces())
	var resolved []int
	now := time.Now()
	for i, n := range ids {
		if n == nil {
			out[i] = adapters.Reading{Device: dev.Name, Tag: c.tags[i].cfg.Name, Quality: adapters.Bad, Time: now, Err: errs[i].Error()}
			continue
		}
		resolved = append(resolved, i)
	}
	batch := readSize(c.dev, c.readLimits(ctx, cn.cl))
	if err := c.readTags(ctx, cn.cl, ids, resolved, &batch, out); err != nil {
		return fail(err)
	}
	return out, nil
}

// nextTick is the first tick start + k*interval strictly after now.
func nextTick(start, now time.Time, interval time.Duration) time.Time {
	k := now.Sub(start)/interval + 1
	return start.Add(k * interval)
}
