/* activity.h — last-activity updates for auto-stop (SPEC 8, standalone). */
#ifndef PX_ACTIVITY_H
#define PX_ACTIVITY_H

/* Records activity for the sandbox, at most once per 45 s per sandbox across all
 * proxy processes (a local filter, then SET NX EX in Redis), then
 * ZADD proxy:last-activity {unix} {id}. Fire and forget: never waits. */
void px_activity_touch(const char *sandbox_id);

/* Asks the orchestrator to start a stopped sandbox: PUBLISH proxy:wake {id},
 * at most once per 5 s per sandbox per process. */
void px_activity_wake(const char *sandbox_id);

#define PX_ACTIVITY_DEDUP 45
#define PX_ACTIVITY_REFRESH 50 /* long-lived connections re-touch this often */

#endif
