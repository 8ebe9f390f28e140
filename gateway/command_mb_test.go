package gateway

import mb "github.com/simonvetter/modbus"

var mbErrIllegalAddress = mb.ErrIllegalDataAddress
