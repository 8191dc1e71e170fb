/* activity.h — last-activity updates for auto-stop (SPEC 8, standalone). */
#ifndef PX_ACTIVITY_H
#define PX_ACTIVITY_H

/* Records activity for the sandbox, at most once per `interval` seconds
 * (activity_interval, Daytona's 45 by default) per sandbox across all proxy
 * processes (a local filter, then SET NX EX in Redis), then
 * ZADD proxy:last-activity {unix} {id}. Fire and forget: never waits. */
void px_activity_touch(const char *sandbox_id, int interval);

struct px_server;
/* API mode (issue 10): activity goes to the Daytona API (C7, POST
 * /sandbox/{id}/last-activity), deduplicated per process and, with Redis,
 * fleet-wide by SET NX of Daytona's key with its {"value":true} envelope. */
void px_activity_set_server(struct px_server *srv);

/* Asks the orchestrator to start a stopped sandbox: PUBLISH proxy:wake {id},
 * at most once per 5 s per sandbox per process. */
void px_activity_wake(const char *sandbox_id);

/* Long-lived connections re-touch this often: just past the guard (50 s for 45). */
#define PX_ACTIVITY_REFRESH(interval) ((interval) + ((interval) / 9 > 0 ? (interval) / 9 : 1))

#endif
