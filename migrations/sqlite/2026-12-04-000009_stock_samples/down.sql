DROP TABLE stock_samples;
