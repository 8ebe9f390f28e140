module github.com/ferry-gateway/ferry

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0 // indirect
	github.com/eclipse/paho.golang v0.23.0 // indirect
	github.com/goburrow/serial v0.1.0 // indirect
	github.com/gopcua/opcua v0.8.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/mochi-mqtt/server/v2 v2.7.9 // indirect
	github.com/rs/xid v1.4.0 // indirect
	github.com/simonvetter/modbus v1.6.4 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
)
