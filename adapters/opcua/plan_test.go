package opcua

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/config"
)

// sizes returns the item counts of a plan's requests, per subscription.
func sizes(p Plan) [][]int {
	var out [][]int
	for _, s := range p.Subscriptions {
		var r []int
		for _, req := range s.Requests {
			r = append(r, len(req))
		}
		out = append(out, r)
	}
	return out
}

func tagsN(n int) []config.OPCUATag {
	tags := make([]config.OPCUATag, n)
	for i := range tags {
		tags[i] = config.OPCUATag{Name: fmt.Sprintf("t%d", i), Node: fmt.Sprintf("ns=2;i=%d", i)}
	}
	return tags
}

func TestNewPlanSplits(t *testing.T) {
	for _, tc := range []struct {
		name  string
		n     int
		batch int
		lim   Limits
		want  [][]int
	}{
		{"none", 0, 0, Limits{}, nil},
		{"one", 1, 0, Limits{}, [][]int{{1}}},
		{"defaults", 2500, 0, Limits{}, [][]int{{500, 500}, {500, 500}, {500}}},
		{"configured batch", 1200, 400, Limits{}, [][]int{{400, 400, 200}, {200}}},
		{"server call limit", 700, 500, Limits{ItemsPerCall: 300}, [][]int{{300, 300, 100}}},
		{"server subscription limit", 25, 4, Limits{ItemsPerSubscription: 10}, [][]int{{4, 4, 2}, {4, 4, 2}, {4, 1}}},
		{"limits above the defaults", 1500, 0, Limits{ItemsPerCall: 5000, ItemsPerSubscription: 5000}, [][]int{{500, 500}, {500}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := device("d", "opc.tcp://127.0.0.1:4840", tagsN(tc.n)...)
			dev.MaxItemsPerRequest = tc.batch // 0: the default, 500
			p := NewPlan(dev, tc.lim)
			if got := sizes(p); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("subscriptions %v, want %v", got, tc.want)
			}
			// every tag exactly once, in order
			next := 0
			for _, s := range p.Subscriptions {
				for _, r := range s.Requests {
					for _, i := range r {
						if i != next {
							t.Fatalf("item %d where %d was due", i, next)
						}
						next++
					}
				}
			}
			if next != tc.n {
				t.Errorf("%d items planned, want %d", next, tc.n)
			}
		})
	}
}

func TestNewPlanItemsAndPoll(t *testing.T) {
	dev := device("d", "opc.tcp://127.0.0.1:4840",
		config.OPCUATag{Name: "a", Node: "ns=2;s=A", SamplingInterval: 50 * time.Millisecond, DeadbandType: "absolute", DeadbandValue: 0.5},
		config.OPCUATag{Name: "b", Node: "ns=2;s=B"})
	dev.PublishingInterval, dev.SamplingInterval = 500*time.Millisecond, 0
	dev.QueueSize = 10
	p := NewPlan(dev, Limits{})
	want := []Item{
		{Tag: "a", Node: "ns=2;s=A", Sampling: 50 * time.Millisecond, QueueSize: 10, DeadbandType: "absolute", DeadbandValue: 0.5},
		{Tag: "b", Node: "ns=2;s=B", Sampling: 500 * time.Millisecond, QueueSize: 10},
	}
	if !reflect.DeepEqual(p.Items, want) || p.Mode != ModeSubscribe || p.PublishingInterval != 500*time.Millisecond || p.KeepAliveCount != 10 {
		t.Errorf("plan %+v", p)
	}

	dev = device("d", "opc.tcp://127.0.0.1:4840", tagsN(7)...)
	dev.Mode, dev.Interval, dev.MaxItemsPerRequest = ModePoll, 2*time.Second, 5
	p = NewPlan(dev, Limits{NodesPerRead: 3})
	if p.Mode != ModePoll || p.Interval != 2*time.Second || p.NodesPerRead != 3 || p.Subscriptions != nil ||
		!reflect.DeepEqual(p.Reads, [][]int{{0, 1, 2}, {3, 4, 5}, {6}}) {
		t.Errorf("poll plan %+v", p)
	}
}
