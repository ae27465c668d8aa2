"""KEDA's external scaler for tiffin: activity and load per deployment and component, over gRPC."""
