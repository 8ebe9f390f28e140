package opcua

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"
)

// keepAliveEvery is the keep-alive period asked of the server; the
// liveness probe runs only when nothing at all arrived for twice that
// (plus the request timeout), so a flowing subscription costs no probes.
const keepAliveEvery = 5 * time.Second

// defaultItemsPerSubscription caps the monitored items of one subscription
// when the server publishes no lower MaxMonitoredItemsPerSubscription: a
// subscription's first publish carries every item's value, and some
// servers (gopcua's among them) drop the channel when that message gets
// too large. maxNotificationsPerPublish asks the server to split it too.
const (
	defaultItemsPerSubscription = 1000
	maxNotificationsPerPublish  = 1000
)

func subParams(publishing time.Duration) *opcua.SubscriptionParameters {
	ka := uint32(max(1, keepAliveEvery/max(publishing, time.Millisecond)))
	return &opcua.SubscriptionParameters{
		Interval:                   publishing,
		MaxKeepAliveCount:          ka,
		MaxNotificationsPerPublish: maxNotificationsPerPublish,
		LifetimeCount:              max(3*ka, uint32(max(1, time.Minute/max(publishing, time.Millisecond)))),
	}
}

func isFilterError(code ua.StatusCode) bool {
	switch code {
	case ua.StatusBadFilterNotAllowed, ua.StatusBadMonitoredItemFilterUnsupported,
		ua.StatusBadMonitoredItemFilterInvalid, ua.StatusBadDeadbandFilterInvalid:
		return true
	}
	return false
}

// itemRequest builds the monitored item of tag i.
func (c *Client) itemRequest(i int, node *ua.NodeID, withFilter bool) *ua.MonitoredItemCreateRequest {
	t := c.tags[i].cfg
	req := opcua.NewMonitoredItemCreateRequestWithDefaults(node, ua.AttributeIDValue, uint32(i))
	si, queue := itemParams(c.dev, t)
	req.RequestedParameters.SamplingInterval = float64(si) / float64(time.Millisecond)
	req.RequestedParameters.QueueSize = queue
	if withFilter && t.DeadbandType != "" {
		db := uint32(ua.DeadbandTypeAbsolute)
		if t.DeadbandType == "percent" {
			db = uint32(ua.DeadbandTypePercent)
		}
		req.RequestedParameters.Filter = ua.NewExtensionObject(&ua.DataChangeFilter{
			Trigger:       ua.DataChangeTriggerStatusValue,
			DeadbandType:  db,
			DeadbandValue: t.DeadbandValue,
		})
	}
	return req
}

// subscribe creates the subscriptions and monitored items of every tag and
// forwards notifications until the session fails or ctx is cancelled.
func (c *Client) subscribe(ctx context.Context, cn *conn, ids []*ua.NodeID, errs []error) (bool, error) {
	notify := make(chan *opcua.PublishNotificationData, 256)
	// The plan of NewPlan (what `ferry plan` prints), adapted below when
	// the server refuses a batch or runs out of monitored items.
	batch, perSub := subscribeSizes(c.dev, c.readLimits(ctx, cn.cl))

	now := time.Now()
	var bad []adapters.Reading
	markBad := func(i int, msg string) {
		bad = append(bad, adapters.Reading{Device: c.dev.Name, Tag: c.tags[i].cfg.Name, Quality: adapters.Bad, Time: now, Err: msg})
	}
	pending := make([]int, 0, len(ids))
	for i, n := range ids {
		if n == nil {
			markBad(i, errs[i].Error())
			continue
		}
		pending = append(pending, i)
	}
	noFilter := map[int]bool{}
	var subs []*opcua.Subscription
	var cur *opcua.Subscription
	inCur, created := 0, 0
	newSub := func() error {
		s, err := cn.cl.Subscribe(ctx, subParams(c.dev.PublishingInterval), notify)
		if err != nil {
			return fmt.Errorf("create subscription: %w", err)
		}
		subs = append(subs, s)
		cur, inCur = s, 0
		c.st.subscriptions.Store(int64(len(subs)))
		return nil
	}
	if len(pending) > 0 {
		if err := newSub(); err != nil {
			return false, err
		}
	}
	for len(pending) > 0 {
		n, fresh := nextChunk(len(pending), inCur, batch, perSub)
		if fresh {
			if err := newSub(); err != nil {
				return false, err
			}
		}
		reqs := make([]*ua.MonitoredItemCreateRequest, n)
		for k, i := range pending[:n] {
			reqs[k] = c.itemRequest(i, ids[i], !noFilter[i])
		}
		res, err := cur.Monitor(ctx, ua.TimestampsToReturnBoth, reqs...)
		if err == nil && res != nil && res.ResponseHeader != nil && res.ResponseHeader.ServiceResult != ua.StatusOK {
			err = res.ResponseHeader.ServiceResult
		}
		if err != nil {
			switch {
			case errors.Is(err, ua.StatusBadTooManyOperations) && n > 1:
				batch = max(1, n/2)
				c.log.Info("opcua server refused the batch size, halving it", "batch", batch)
				continue
			case errors.Is(err, ua.StatusBadTooManyMonitoredItems) && inCur > 0:
				if err := newSub(); err != nil {
					return false, err
				}
				continue
			}
			return false, fmt.Errorf("create monitored items: %w", err)
		}
		if len(res.Results) != n {
			return false, fmt.Errorf("create monitored items: %d results for %d items", len(res.Results), n)
		}
		var retry []int
		full := false
		for k, r := range res.Results {
			i := pending[k]
			switch {
			case Quality(r.StatusCode) != adapters.Bad:
				inCur++
				created++
			case r.StatusCode == ua.StatusBadTooManyMonitoredItems:
				retry = append(retry, i)
				full = true
			case isFilterError(r.StatusCode) && !noFilter[i] && c.tags[i].cfg.DeadbandType != "":
				c.log.Warn("opcua server refused the deadband filter; monitoring without it", "tag", c.tags[i].cfg.Name, "status", StatusName(r.StatusCode))
				noFilter[i] = true
				retry = append(retry, i)
			default:
				markBad(i, StatusName(r.StatusCode))
			}
		}
		pending = append(retry, pending[n:]...)
		if full {
			if inCur == 0 {
				return false, fmt.Errorf("create monitored items: %s in an empty subscription", StatusName(ua.StatusBadTooManyMonitoredItems))
			}
			if err := newSub(); err != nil {
				return false, err
			}
		}
	}
	c.st.monitoredItems.Store(int64(created))
	c.st.failedIt.Store(int64(len(bad)))
	c.log.Info("opcua subscribed", "items", created, "failed", len(bad), "subscriptions", len(subs), "batch", batch,
		"setup", time.Since(cn.start).Round(time.Millisecond))
	c.setState(true, nil)
	c.deliver(bad)

	subIDs := make([]uint32, len(subs))
	for k, s := range subs {
		subIDs[k] = s.SubscriptionID
	}
	idle := 2*keepAliveEvery + c.dev.Timeout
	if pi := 3 * c.dev.PublishingInterval; pi > idle {
		idle = pi
	}
	tick := time.NewTicker(idle / 2)
	defer tick.Stop()
	lastAlive := time.Now()
	firstData := true
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-cn.dead:
			return true, fmt.Errorf("connection to %s lost", c.dev.Endpoint)
		case n := <-notify:
			if n.Error != nil {
				return true, fmt.Errorf("subscription %d: %w", n.SubscriptionID, n.Error)
			}
			lastAlive = time.Now()
			switch v := n.Value.(type) {
			case *ua.DataChangeNotification:
				c.st.notifications.Add(1)
				if firstData {
					firstData = false
					c.st.lastFirstDataLag.Store(int64(time.Since(cn.start)))
				}
				c.deliver(c.dataChange(v, lastAlive))
			case *ua.StatusChangeNotification:
				if Quality(v.Status) == adapters.Bad {
					return true, fmt.Errorf("subscription %d: %s", n.SubscriptionID, StatusName(v.Status))
				}
			}
		case <-tick.C:
			if time.Since(lastAlive) < idle {
				continue
			}
			if err := c.probe(ctx, cn.cl); err != nil {
				if ctx.Err() != nil {
					return true, nil
				}
				return true, fmt.Errorf("server does not answer: %w", err)
			}
			if err := c.checkSubscriptions(ctx, cn.cl, subIDs); err != nil {
				return true, err
			}
			lastAlive = time.Now()
		}
	}
}

// checkSubscriptions asks the server whether our subscriptions still exist
// (SetPublishingMode on all of them, a no-op when they do). A server that
// does not implement the service is taken at its word by the probe.
func (c *Client) checkSubscriptions(ctx context.Context, cl *opcua.Client, ids []uint32) error {
	if len(ids) == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, c.dev.Timeout)
	defer cancel()
	var res *ua.SetPublishingModeResponse
	err := cl.Send(pctx, &ua.SetPublishingModeRequest{PublishingEnabled: true, SubscriptionIDs: ids}, func(r ua.Response) error {
		v, ok := r.(*ua.SetPublishingModeResponse)
		if !ok {
			return fmt.Errorf("unexpected response %T", r)
		}
		res = v
		return nil
	})
	if err != nil {
		if errors.Is(err, ua.StatusBadServiceUnsupported) {
			return nil
		}
		return fmt.Errorf("check subscriptions: %w", err)
	}
	if res.ResponseHeader != nil && res.ResponseHeader.ServiceResult == ua.StatusBadServiceUnsupported {
		return nil
	}
	for k, r := range res.Results {
		if r == ua.StatusBadSubscriptionIDInvalid && k < len(ids) {
			return fmt.Errorf("subscription %d no longer exists on the server", ids[k])
		}
	}
	return nil
}

func (c *Client) dataChange(v *ua.DataChangeNotification, now time.Time) []adapters.Reading {
	rs := make([]adapters.Reading, 0, len(v.MonitoredItems))
	for _, it := range v.MonitoredItems {
		if it == nil || int(it.ClientHandle) >= len(c.tags) {
			continue
		}
		rs = append(rs, reading(c.dev.Name, c.tags[it.ClientHandle].cfg.Name, it.Value, now))
	}
	return rs
}
