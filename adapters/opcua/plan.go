package opcua

import (
	"time"

	"github.com/ferry-gateway/ferry/config"
)

// Limits are the operation limits a server publishes that shape batching
// (read at connect); 0 means the server publishes none.
type Limits struct {
	NodesPerRead         uint32 // MaxNodesPerRead
	ItemsPerCall         uint32 // MaxMonitoredItemsPerCall
	ItemsPerSubscription uint32 // MaxMonitoredItemsPerSubscription
}

// Item is how one tag is monitored (subscribe) or read (poll).
type Item struct {
	Tag           string
	Node          string
	Sampling      time.Duration // requested sampling interval (subscribe)
	QueueSize     uint32        // requested queue size (subscribe)
	DeadbandType  string        // "", "absolute" or "percent" (subscribe)
	DeadbandValue float64
}

// Subscription is one subscription of a plan: its CreateMonitoredItems
// calls, each a list of indexes into Plan.Items.
type Subscription struct {
	Requests [][]int
}

// Plan is how a Client monitors or reads a device's tags when the server
// accepts every item: the client follows it (subscribe.go, poll.go) and
// `ferry plan` prints it. A server that refuses a batch size or runs out
// of monitored items makes the client split further, and says so in its
// log.
type Plan struct {
	Mode string // ModeSubscribe or ModePoll

	// subscribe
	PublishingInterval time.Duration
	KeepAliveCount     uint32
	LifetimeCount      uint32
	ItemsPerRequest    int // monitored items per CreateMonitoredItems call
	ItemsPerSub        int // monitored items per subscription
	Subscriptions      []Subscription

	// poll
	Interval     time.Duration
	NodesPerRead int     // nodes per Read request
	Reads        [][]int // the Read requests of one cycle, indexes into Items

	Items []Item // one per tag, in config order
}

// withDefaults fills the device settings NewClient and NewPlan default
// when the config leaves them zero.
func withDefaults(dev config.OPCUADevice) config.OPCUADevice {
	if dev.Mode == "" {
		dev.Mode = ModeSubscribe
	}
	if dev.Timeout <= 0 {
		dev.Timeout = 10 * time.Second
	}
	if dev.Interval <= 0 {
		dev.Interval = time.Second
	}
	if dev.PublishingInterval <= 0 {
		dev.PublishingInterval = time.Second
	}
	if dev.MaxItemsPerRequest <= 0 {
		dev.MaxItemsPerRequest = 500
	}
	return dev
}

// itemParams returns the requested sampling interval and queue size of t:
// the tag's sampling interval, else the device's, else the publishing
// interval; the device's queue size, at least 1.
func itemParams(dev config.OPCUADevice, t config.OPCUATag) (time.Duration, uint32) {
	si := t.SamplingInterval
	if si <= 0 {
		si = dev.SamplingInterval
	}
	if si <= 0 {
		si = dev.PublishingInterval
	}
	return si, max(dev.QueueSize, 1)
}

// subscribeSizes returns the monitored items per CreateMonitoredItems call
// and per subscription: max_items_per_request and 1,000, lowered to the
// server's limits.
func subscribeSizes(dev config.OPCUADevice, lim Limits) (perRequest, perSub int) {
	perRequest = dev.MaxItemsPerRequest
	if lim.ItemsPerCall > 0 && int(lim.ItemsPerCall) < perRequest {
		perRequest = int(lim.ItemsPerCall)
	}
	perSub = defaultItemsPerSubscription
	if lim.ItemsPerSubscription > 0 && int(lim.ItemsPerSubscription) < perSub {
		perSub = int(lim.ItemsPerSubscription)
	}
	return perRequest, perSub
}

// readSize returns the nodes per Read request: max_items_per_request,
// lowered to the server's MaxNodesPerRead.
func readSize(dev config.OPCUADevice, lim Limits) int {
	n := dev.MaxItemsPerRequest
	if lim.NodesPerRead > 0 && int(lim.NodesPerRead) < n {
		n = int(lim.NodesPerRead)
	}
	return n
}

// nextChunk returns how many of pending items the next CreateMonitoredItems
// call carries, and whether a new subscription must be created for it
// first, when the current one holds inCur items.
func nextChunk(pending, inCur, perRequest, perSub int) (n int, fresh bool) {
	n = min(perRequest, pending)
	if perSub > 0 {
		if inCur >= perSub {
			fresh, inCur = true, 0
		}
		n = min(n, perSub-inCur)
	}
	return n, fresh
}

// NewPlan returns the plan of dev for a server with limits lim (the zero
// Limits when they are not known: the configured sizes then apply).
func NewPlan(dev config.OPCUADevice, lim Limits) Plan {
	dev = withDefaults(dev)
	p := Plan{Mode: dev.Mode, Items: make([]Item, len(dev.Tags))}
	for i, t := range dev.Tags {
		si, q := itemParams(dev, t)
		p.Items[i] = Item{Tag: t.Name, Node: t.Node, Sampling: si, QueueSize: q, DeadbandType: t.DeadbandType, DeadbandValue: t.DeadbandValue}
	}
	if dev.Mode == ModePoll {
		p.Interval = dev.Interval
		p.NodesPerRead = readSize(dev, lim)
		for off := 0; off < len(p.Items); off += p.NodesPerRead {
			p.Reads = append(p.Reads, indexes(off, min(off+p.NodesPerRead, len(p.Items))))
		}
		return p
	}
	sp := subParams(dev.PublishingInterval)
	p.PublishingInterval, p.KeepAliveCount, p.LifetimeCount = dev.PublishingInterval, sp.MaxKeepAliveCount, sp.LifetimeCount
	p.ItemsPerRequest, p.ItemsPerSub = subscribeSizes(dev, lim)
	inCur := 0
	for off := 0; off < len(p.Items); {
		n, fresh := nextChunk(len(p.Items)-off, inCur, p.ItemsPerRequest, p.ItemsPerSub)
		if fresh || len(p.Subscriptions) == 0 {
			p.Subscriptions = append(p.Subscriptions, Subscription{})
			inCur = 0
		}
		s := &p.Subscriptions[len(p.Subscriptions)-1]
		s.Requests = append(s.Requests, indexes(off, off+n))
		inCur += n
		off += n
	}
	return p
}

func indexes(from, to int) []int {
	out := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
