package opcua

import (
	"context"
	"fmt"
	"strings"

	"github.com/ferry-gateway/ferry/config"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// BrowseEntry is one node found by Browse.
type BrowseEntry struct {
	Depth      int
	NodeID     string // with nsu= when the namespace is not 0, ready for the TOML
	BrowseName string
	Class      string // Object, Variable, Method, ...
	DataType   string // variables only
	Access     string // variables only: "r", "w", "rw" or "-"
}

// Browse connects with dev's endpoint and security settings and walks the
// address space from root ("" means the Objects folder) down to depth
// levels along hierarchical references, calling fn for every node.
func Browse(ctx context.Context, dev config.OPCUADevice, stateDir, root string, depth int, fn func(BrowseEntry)) error {
	c, err := NewClient(dev, stateDir, nil, nil)
	if err != nil {
		return err
	}
	cn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer cn.close()
	ns := cn.cl.Namespaces()
	start := ua.NewNumericNodeID(0, id.ObjectsFolder)
	if root != "" {
		t, err := parseTag(config.OPCUATag{Node: root})
		if err != nil {
			return err
		}
		c.tags = []tag{t}
		ids, errs := c.resolve(ns)
		if errs[0] != nil {
			return errs[0]
		}
		start = ids[0]
	}
	seen := map[string]bool{}
	var walk func(n *ua.NodeID, level int) error
	walk = func(n *ua.NodeID, level int) error {
		if level > depth || seen[n.String()] {
			return nil
		}
		seen[n.String()] = true
		refs, err := cn.cl.Node(n).References(ctx, id.HierarchicalReferences, ua.BrowseDirectionForward, ua.NodeClassAll, true)
		if err != nil {
			return fmt.Errorf("browse %s: %w", n, err)
		}
		for _, r := range refs {
			if r == nil || r.NodeID == nil || r.NodeID.NodeID == nil {
				continue
			}
			child := r.NodeID.NodeID
			e := BrowseEntry{Depth: level, NodeID: nsuForm(child, ns), Class: strings.TrimPrefix(r.NodeClass.String(), "NodeClass")}
			if r.BrowseName != nil {
				e.BrowseName = r.BrowseName.Name
			}
			if r.NodeClass == ua.NodeClassVariable {
				e.DataType, e.Access = variableInfo(ctx, cn, child, ns)
			}
			fn(e)
			if err := walk(child, level+1); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(start, 1)
}

// nsuForm writes a node id with its namespace URI (stable across server
// restarts) unless it is in namespace 0.
func nsuForm(n *ua.NodeID, ns []string) string {
	s := n.String()
	idx := int(n.Namespace())
	if idx == 0 || idx >= len(ns) {
		return s
	}
	if i := strings.IndexByte(s, ';'); i >= 0 && strings.HasPrefix(s, "ns=") {
		return "nsu=" + ns[idx] + ";" + s[i+1:]
	}
	return s
}

func variableInfo(ctx context.Context, cn *conn, n *ua.NodeID, ns []string) (dataType, access string) {
	dvs, err := cn.cl.Node(n).Attributes(ctx, ua.AttributeIDDataType, ua.AttributeIDUserAccessLevel)
	if err != nil || len(dvs) != 2 {
		return "?", "?"
	}
	dataType, access = "?", "?"
	if dv := dvs[0]; dv != nil && dv.Value != nil {
		if dt, ok := dv.Value.Value().(*ua.NodeID); ok && dt != nil {
			dataType = nsuForm(dt, ns)
			if dt.Namespace() == 0 {
				if name := id.Name(dt.IntID()); name != "" {
					dataType = name
				}
			}
		}
	}
	if dv := dvs[1]; dv != nil && dv.Value != nil {
		if b, ok := dv.Value.Value().(uint8); ok {
			access = ""
			if b&1 != 0 {
				access += "r"
			}
			if b&2 != 0 {
				access += "w"
			}
			if access == "" {
				access = "-"
			}
		}
	}
	return dataType, access
}
