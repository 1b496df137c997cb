#!/bin/sh
# Joins rabbit@rabbitmq-2 and rabbit@rabbitmq-3 to rabbit@rabbitmq (deploy/rabbitmq-cluster.yml).
# A node already in the cluster is left alone, so this runs at every `up`.
set -eu
seed=rabbit@rabbitmq
for node in rabbit@rabbitmq-2 rabbit@rabbitmq-3; do
  if rabbitmqctl -q -n "$node" cluster_status --formatter json | grep -q "\"$seed\""; then
    echo "$node is in the cluster"
    continue
  fi
  echo "joining $node to $seed"
  rabbitmqctl -q -n "$node" stop_app
  rabbitmqctl -q -n "$node" reset
  rabbitmqctl -q -n "$node" join_cluster "$seed"
  rabbitmqctl -q -n "$node" start_app
done
rabbitmqctl -q -n "$seed" await_online_nodes 3 --timeout 120
echo "cluster of 3 nodes online"
