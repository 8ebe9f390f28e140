package modbus

import (
	"fmt"
	"log/slog"

	"github.com/ferry-gateway/ferry/config"
)

// ReadRaw reads count registers (holding, input) or bits (coil, discrete)
// of table from address start of the device at dev.URL, unit dev.Unit,
// with dev.Timeout and, for rtu://, dev's serial settings: one request,
// no decoding (ferry probe). It shares the connection of any poller of the
// same url in this process.
func ReadRaw(dev config.ModbusDevice, table string, start, count uint16) ([]uint16, []bool, error) {
	limit := maxRegisters
	if table == config.TableCoil || table == config.TableDiscrete {
		limit = maxBits
	}
	if count < 1 || int(count) > limit {
		return nil, nil, fmt.Errorf("count %d out of range 1..%d for table %s", count, limit, table)
	}
	if int(start)+int(count) > 1<<16 {
		return nil, nil, fmt.Errorf("address %d + %d runs past 65535", start, count)
	}
	p := &Poller{dev: dev}
	l, err := acquireLink(dev, p, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, nil, err
	}
	defer l.release(p)
	h := l.hold()
	defer h.unhold()
	if _, err := h.ensure(true, minBackoff, maxBackoff); err != nil {
		return nil, nil, err
	}
	words, bits, err := h.read(dev.Unit, table, start, count)
	if err != nil {
		err = fmt.Errorf("read %s %d+%d: %w", table, start, count, err)
		if !isException(err) {
			h.fail(err, minBackoff, maxBackoff)
		}
	}
	return words, bits, err
}
